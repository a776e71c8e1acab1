"""`thinksafe compare` end to end on the tiny organism: one row per method, every column."""

from __future__ import annotations

import json

import pytest

from thinksafe.config import load_config
from thinksafe.errors import ConfigError

TINY = ["prompts.n_harmful=4", "prompts.n_reasoning=3", "prompts.n_borderline=2",
        "evaluate.n_harmful=3", "evaluate.n_reasoning=2", "evaluate.n_borderline=2",
        "generate.max_new_tokens=16", "evaluate.max_new_tokens=16", "train.epochs=1",
        "train.batch_size=4", "model.batch_size=8", "guard.batch_size=8",
        "compare.no_steering_samples=2"]


def _cfg(out, extra=()):
    from pathlib import Path

    import thinksafe
    path = Path(thinksafe.__file__).parent / "configs" / "compare-organism.yaml"
    return load_config(path, TINY + [f"out={out}", *extra])


def test_shipped_compare_config_loads():
    cfg = _cfg("x")
    assert cfg.compare.methods == ["base", "thinksafe", "thinksafe_kl", "direct_refusal", "no_steering",
                                   "no_reasoning"]


def test_bad_method_and_override_fail_early(tmp_path):
    from thinksafe.stages.compare import run_compare
    with pytest.raises(ConfigError):
        run_compare(_cfg(tmp_path / "a", ["compare.methods=[base, grpo]"]), show=False)
    with pytest.raises(ConfigError):
        run_compare(_cfg(tmp_path / "b", ["compare.set=[epochs=5]"]), show=False)
    with pytest.raises(ConfigError):
        run_compare(_cfg(tmp_path / "c", ["compare.methods=[external]"]), show=False)


def test_compare_end_to_end(tiny_organism, tmp_path):
    from thinksafe.stages.compare import COLUMNS, run_compare
    out = tmp_path / "cmp"
    cfg = _cfg(out, ["compare.set=[direct_refusal:train.epochs=2]"])
    logs = []
    table = run_compare(cfg, show=False, log=logs.append)
    methods = ["base", "thinksafe", "thinksafe_kl", "direct_refusal", "no_steering", "no_reasoning"]
    assert [r["method"] for r in table["rows"]] == methods
    kl_summary = json.loads((out / "thinksafe_kl" / "train_summary.json").read_text())
    assert kl_summary["objective"] == "kl" and kl_summary["examples"] > 0       # ThinkSafe's data, KL loss
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(table["rows"]))
    md = (out / "compare.md").read_text()
    for m in methods:
        assert f"| {m} |" in md
    for r in table["rows"]:
        assert set(COLUMNS) <= set(r)
        for k in ("harmful_rate", "over_refusal_rate", "reasoning_accuracy"):
            assert 0.0 <= r[k] <= 1.0, (r["method"], k)
        if r["method"] == "base":
            assert r["perplexity"] is None and r["train_examples"] == 0 and r["flops"] == 0.0
        else:
            assert r["perplexity"] > 0 and r["flops"] > 0 and r["seconds"] > 0, r
            assert (out / r["method"] / "manifest.json").exists()
    dr = [json.loads(x) for x in (out / "direct_refusal" / "sft.jsonl").read_text().splitlines()]
    assert dr and all(x["response"].startswith("<think>\nI should not answer this question!") for x in dr)
    nr = [json.loads(x) for x in (out / "no_reasoning" / "sft.jsonl").read_text().splitlines()]
    assert all(x["response"].startswith("<think>\n\n</think>\n\n") for x in nr if x["label"] == "harmful")
    man = json.loads((out / "direct_refusal" / "manifest.json").read_text())
    assert man["stages"]["train"]["summary"]["epochs"] == 2.0            # per-method override
    ns = json.loads((out / "no_steering" / "manifest.json").read_text())
    assert ns["stages"]["generate"]["summary"]["records"] == 2 * 4       # k samples per harmful prompt
    assert ns["compute_total"]["flops"] > 0
    # a rerun resumes: every stage is skipped, same table
    again = run_compare(cfg, show=False, log=logs.append)
    assert [r["harmful_rate"] for r in again["rows"]] == [r["harmful_rate"] for r in table["rows"]]

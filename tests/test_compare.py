"""`thinksafe compare` end to end on the tiny organism: one row per method, every column."""

from __future__ import annotations

import json

import pytest

from thinksafe.errors import ConfigError
from conftest import compare_config


def test_shipped_compare_config_loads():
    cfg = compare_config("x")
    assert cfg.compare.methods == ["base", "thinksafe", "thinksafe_kl", "teacher", "direct_refusal",
                                   "no_steering", "no_reasoning", "grpo", "opsa", "opsa_searched_context",
                                   "thinksafe_2_rounds"]
    assert "opsa:train.epochs=1" in cfg.compare.set and "opsa:opsa.benign_context=none" in cfg.compare.set
    assert cfg.compare.teacher_path == "organism-teacher"


def test_bad_method_and_override_fail_early(tmp_path):
    from thinksafe.compare import run_compare
    with pytest.raises(ConfigError):
        run_compare(compare_config(tmp_path / "a", ["compare.methods=[base, opd]"]), show=False)
    with pytest.raises(ConfigError, match="teacher_path"):
        run_compare(compare_config(tmp_path / "d", ["compare.methods=[teacher]", "compare.teacher_path=null"]), show=False)
    with pytest.raises(ConfigError):
        run_compare(compare_config(tmp_path / "b", ["compare.set=[epochs=5]"]), show=False)
    with pytest.raises(ConfigError):
        run_compare(compare_config(tmp_path / "c", ["compare.methods=[external]"]), show=False)


def test_compare_end_to_end(tiny_organism, tmp_path):
    from thinksafe.compare import COLUMNS, run_compare
    out = tmp_path / "cmp"
    cfg = compare_config(out, ["compare.set=[direct_refusal:train.epochs=2, teacher:generate.max_new_tokens=96]",
                               "compare.methods=[base, thinksafe, thinksafe_kl, teacher, direct_refusal, no_steering,"
                               " no_reasoning, grpo]"])       # the OPSA and rounds methods: test_opsa, test_rounds
    logs = []
    table = run_compare(cfg, show=False, log=logs.append)
    done = [x.split("]")[0][len("[compare "):] for x in logs if x.startswith("[compare ") and ":" not in x.split("]")[0]]
    assert done == ["base", "thinksafe", "thinksafe_kl", "teacher", "direct_refusal", "no_steering",
                    "no_reasoning", "grpo"]                       # one line per method, in order
    methods = ["base", "thinksafe", "thinksafe_kl", "teacher", "direct_refusal", "no_steering",
               "no_reasoning", "grpo"]
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
        elif r["method"] == "grpo":
            assert r["perplexity"] is None and r["flops"] > 0 and r["flops_vs_thinksafe"] > 0
            assert "steps" in r["notes"] and "harmful <=" in r["notes"]
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
    # teacher distillation: the teacher's own wording, generation FLOPs at the teacher's size
    te = [json.loads(x) for x in (out / "teacher" / "sft.jsonl").read_text().splitlines()]
    assert te and all(x["steering"] == "teacher" for x in te)
    tm = json.loads((out / "teacher" / "manifest.json").read_text())
    from thinksafe.compute import model_params
    assert tm["stages"]["generate"]["compute"]["params"] == model_params("organism-teacher")["flop_params"]
    # GRPO: its target is ThinkSafe's harmful rate and its budget a multiple of ThinkSafe's FLOPs
    ts = next(r for r in table["rows"] if r["method"] == "thinksafe")
    import yaml
    gcfg = yaml.safe_load((out / "grpo" / "config.yaml").read_text())["grpo"]
    assert gcfg["stop_at_harmful"] == pytest.approx(ts["harmful_rate"])
    assert gcfg["max_flops"] == pytest.approx(cfg.compare.grpo_budget * ts["flops"])
    # a rerun resumes: every stage is skipped, same table
    relog = []
    again = run_compare(cfg, show=False, log=relog.append)
    assert [r["harmful_rate"] for r in again["rows"]] == [r["harmful_rate"] for r in table["rows"]]
    assert not [x for x in relog if "runs:" in x], relog            # nothing ran again

"""One full tiny pipeline run, from an organism built from scratch, through the CLI's code paths."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from thinksafe.config import load_config
from thinksafe.organism.build import TINY, build
from thinksafe.pipeline import run_all

SMALL = ["prompts.n_harmful=8", "prompts.n_reasoning=8", "prompts.n_borderline=4",
         "evaluate.n_harmful=6", "evaluate.n_reasoning=4", "evaluate.n_borderline=4",
         "generate.max_new_tokens=24", "evaluate.max_new_tokens=24", "train.epochs=1",
         "train.batch_size=4", "model.batch_size=8", "guard.batch_size=8"]


def _config(out, seed=0):
    from thinksafe.cli import demo_config_path
    return load_config(demo_config_path(), SMALL + [f"out={out}", f"seed={seed}"])


def test_build_writes_standard_hf_folders(tiny_organism):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out, manifest = tiny_organism
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    assert type(base).__name__ == "Qwen3ForCausalLM"
    guard = AutoModelForCausalLM.from_pretrained(out / "guard")
    assert type(guard).__name__ == "LlamaForCausalLM"
    tok = AutoTokenizer.from_pretrained(out / "base")
    assert "<think>" in tok.get_vocab() and tok.chat_template
    assert (out / "base" / "model.safetensors").is_file()
    assert manifest["base_params"] > 0


def test_build_is_deterministic(tiny_organism, tmp_path):
    from safetensors.torch import load_file
    out, _ = tiny_organism
    build(tmp_path, replace(TINY, seed=3), log=lambda s: None)
    a, b = load_file(out / "base" / "model.safetensors"), load_file(tmp_path / "base" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)


def test_full_pipeline_and_rerun(tiny_organism, tmp_path):
    cfg = _config(tmp_path / "run")
    logs = []
    run_all(cfg, show=False, log=logs.append)
    run_dir = tmp_path / "run"
    for name in ["generated.jsonl", "judged.jsonl", "sft.jsonl", "dataset_stats.json",
                 "adapter/adapter_config.json", "train_summary.json", "summary.json", "report.md",
                 "summary.csv", "harmful_by_category.png"]:
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"base", "thinksafe"}
    for m in summary["models"].values():
        for key in ["harmful_rate", "harmful_rate_oracle", "over_refusal_rate", "reasoning_accuracy",
                    "guard_agreement"]:
            assert 0.0 <= m[key] <= 1.0
    # the training set keeps ORIGINAL prompts, never the steering text
    rows = [json.loads(x) for x in (run_dir / "sft.jsonl").read_text().splitlines()]
    assert rows and not any("The following prompt is harmful" in r["prompt"] for r in rows)
    gen = [json.loads(x) for x in (run_dir / "generated.jsonl").read_text().splitlines()]
    assert {g["steering"] for g in gen if g["label"] == "harmful"} == {"prefix"}
    assert {g["steering"] for g in gen if g["label"] != "harmful"} == {None}
    # rerun: every finished stage is skipped, the numbers are unchanged
    logs.clear()
    run_all(cfg, show=False, log=logs.append)
    assert sum("skipped" in line for line in logs) == 5
    assert json.loads((run_dir / "summary.json").read_text())["models"] == summary["models"]


def test_same_seed_same_numbers(tiny_organism, tmp_path):
    a = run_all(_config(tmp_path / "a", seed=5), show=False, log=lambda s: None)
    b = run_all(_config(tmp_path / "b", seed=5), show=False, log=lambda s: None)
    assert a["report"]["models"] == b["report"]["models"]
    ga = (tmp_path / "a" / "generated.jsonl").read_text()
    gb = (tmp_path / "b" / "generated.jsonl").read_text()
    assert ga == gb


def test_other_config_in_same_folder_is_refused(tiny_organism, tmp_path):
    from thinksafe.errors import ConfigError
    from thinksafe.pipeline import prepare_run_dir
    prepare_run_dir(_config(tmp_path / "r", seed=1))
    with pytest.raises(ConfigError, match="different config"):
        prepare_run_dir(_config(tmp_path / "r", seed=2))

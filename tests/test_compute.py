"""Compute accounting: FLOP formulas from hand-made summaries, parameter counts from config.json,
and compute entries in a tiny pipeline run's manifest."""

from __future__ import annotations

import json

import pytest

from thinksafe import compute

MODEL = {"flop_params": 1000, "total": 1200, "embedding": 200, "tied_embeddings": True}
GUARD = {"flop_params": 300, "total": 350, "embedding": 50, "tied_embeddings": True}
DEV = {"processes": 1, "device": "cpu", "devices": 1}


def test_generate_is_2N_per_prompt_and_generated_token():
    c = compute.stage_compute("generate", {"completion_tokens": 70, "prompt_tokens": 30, "seconds": 2.0},
                              MODEL, GUARD, device=DEV)
    assert c["flops"] == 2 * 1000 * 100
    assert (c["tokens_generated"], c["tokens_prefilled"], c["seconds"]) == (70, 30, 2.0)
    shard = compute.stage_compute("generate[1/4]", {"completion_tokens": 1, "prompt_tokens": 1}, MODEL,
                                  None, device=DEV)
    assert shard["flops"] == 2 * 1000 * 2


def test_judge_uses_guard_params_and_null_when_tokens_missing():
    c = compute.stage_compute("judge", {"judged": 5, "seconds": 1.0, "guard_input_tokens": 400},
                              MODEL, GUARD, device=DEV)
    assert c["flops"] == 2 * 300 * 400 and c["tokens_prefilled"] == 400
    missing = compute.stage_compute("judge", {"judged": 5, "seconds": 1.0}, MODEL, GUARD, device=DEV)
    assert missing["flops"] is None and missing["notes"]


def test_train_lora_full_and_kl():
    s = {"input_tokens_seen": 500, "response_tokens": 100, "epochs": 3, "steps": 9, "seconds": 4.0,
         "trainable_params": 10, "method": "lora", "objective": "sft", "world_size": 2}
    c = compute.stage_compute("train", s, MODEL, GUARD, device=DEV)
    assert c["flops"] == (4 * 1000 + 6 * 10) * 500
    assert c["tokens_trained"] == 500 and c["processes"] == 2
    full = compute.stage_compute("train", {**s, "method": "full"}, MODEL, GUARD, device=DEV)
    assert full["flops"] == 6 * 1000 * 500
    kl = compute.stage_compute("train", {**s, "objective": "kl"}, MODEL, GUARD, device=DEV)
    assert kl["flops"] == (4 * 1000 + 6 * 10) * 500 + 2 * 1000 * 500
    unknown = compute.stage_compute("train", {k: v for k, v in s.items() if k != "input_tokens_seen"},
                                    MODEL, GUARD, device=DEV)
    assert unknown["flops"] is None and unknown["tokens_trained"] is None
    no_model = compute.stage_compute("train", s, None, None, device=DEV)
    assert no_model["flops"] is None


def test_evaluate_reads_prompt_tokens_from_generation_files(tmp_path):
    folder = tmp_path / "eval" / "base"
    folder.mkdir(parents=True)
    rows = [{"completion": {"prompt_tokens": 10, "completion_tokens": 5}}] * 3
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = compute.stage_compute("evaluate", {"base": {"seconds": 1.5, "generated_tokens": 15}}, MODEL, GUARD,
                              tmp_path, device=DEV)
    assert c["models"]["base"]["flops"] == 2 * 1000 * 45
    assert c["flops"] == 2 * 1000 * 45 and c["seconds"] == 1.5


def test_total_sums_and_marks_unknown():
    stages = {"generate": {"compute": {"flops": 10.0, "seconds": 1.0, "tokens_generated": 3,
                                       "tokens_prefilled": 2, "tokens_trained": None}},
              "train": {"compute": {"flops": 5.0, "seconds": 2.0, "tokens_generated": None,
                                    "tokens_prefilled": None, "tokens_trained": 7}}}
    t = compute.total(stages)
    assert (t["flops"], t["seconds"], t["tokens_trained"]) == (15.0, 3.0, 7)
    stages["judge"] = {"compute": {"flops": None, "seconds": 1.0}}
    assert compute.total(stages)["flops"] is None


@pytest.mark.parametrize("alias", ["organism", "organism-guard"])
def test_param_counts_match_the_shipped_models(alias):
    from transformers import AutoModelForCausalLM

    from thinksafe.organism import resolve_model_path
    counts = compute.model_params(alias)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(alias))
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_param_counts_untied_qwen2_style():
    cfg = {"model_type": "qwen2", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 10, "tie_word_embeddings": False}
    c = compute.param_counts(cfg)
    from transformers import Qwen2Config, Qwen2ForCausalLM
    m = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in cfg.items() if k != "model_type"}))
    assert c["total"] == sum(p.numel() for p in m.parameters())
    assert c["flop_params"] == c["total"] - c["embedding"]
    assert compute.param_counts({"hidden_size": 8}) is None


def test_manifest_gets_compute_after_a_tiny_run(tiny_organism, tmp_path):
    from thinksafe.config import demo_config_path
    from thinksafe.config import load_config
    from thinksafe.pipeline import run_all
    small = ["prompts.n_harmful=4", "prompts.n_reasoning=4", "prompts.n_borderline=2",
             "evaluate.n_harmful=3", "evaluate.n_reasoning=2", "evaluate.n_borderline=2",
             "generate.max_new_tokens=16", "evaluate.max_new_tokens=16", "train.epochs=1",
             "train.batch_size=4", "model.batch_size=8", "guard.batch_size=8"]
    cfg = load_config(demo_config_path(), small + [f"out={tmp_path / 'run'}"])
    run_all(cfg, show=False, log=lambda s: None)
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for stage in ("generate", "judge", "dataset", "train", "evaluate"):
        c = m["stages"][stage]["compute"]
        assert "error" not in c, c
        assert c["flops"] is not None and c["flops"] >= 0, (stage, c)
        assert c["device"]
    n = compute.model_params("organism")["flop_params"]
    g = m["stages"]["generate"]
    assert g["compute"]["flops"] == 2 * n * (g["summary"]["completion_tokens"] + g["summary"]["prompt_tokens"])
    assert m["stages"]["judge"]["summary"]["guard_input_tokens"] > 0
    assert m["stages"]["train"]["compute"]["tokens_trained"] > 0
    assert m["compute_total"]["flops"] == pytest.approx(sum(
        m["stages"][s]["compute"]["flops"] for s in ("generate", "judge", "dataset", "train", "evaluate")))

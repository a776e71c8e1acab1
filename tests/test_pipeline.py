"""One full tiny pipeline run, from an organism built from scratch, through the CLI's code paths."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from thinksafe.config import load_config
from thinksafe.organism.build import TINY, build
from thinksafe.pipeline import run_all
from conftest import SMALL_RUN, fake_stages


def _config(out, seed=0):
    from thinksafe.config import demo_config_path
    return load_config(demo_config_path(), SMALL_RUN + [f"out={out}", f"seed={seed}"])


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
    # rerun: every finished stage is kept, the numbers are unchanged
    logs.clear()
    run_all(cfg, show=False, log=logs.append)
    assert sum("unchanged" in line for line in logs) == 6, logs
    assert json.loads((run_dir / "summary.json").read_text())["models"] == summary["models"]
    # a new train.lr reruns exactly train, evaluate (the trained model only) and report
    gen, judged = (run_dir / "generated.jsonl").read_bytes(), (run_dir / "judged.jsonl").read_bytes()
    base_eval = (run_dir / "eval" / "base" / "generations.jsonl").read_bytes()
    old_adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    logs.clear()
    run_all(replace(cfg, train=replace(cfg.train, lr=cfg.train.lr * 2)), show=False, log=logs.append)
    reran = [line.split("]")[0][1:] for line in logs if "] reruns:" in line]
    kept = [line.split("]")[0][1:] for line in logs if "] unchanged" in line]
    assert reran == ["train", "evaluate", "report"], logs
    assert kept == ["generate", "judge", "dataset"], logs
    assert any(f"train.lr: {cfg.train.lr} -> {cfg.train.lr * 2}" in line for line in logs), logs
    assert any("[evaluate] reruns: train's output changed" in line for line in logs), logs
    assert (run_dir / "generated.jsonl").read_bytes() == gen
    assert (run_dir / "judged.jsonl").read_bytes() == judged
    assert (run_dir / "eval" / "base" / "generations.jsonl").read_bytes() == base_eval
    # the old adapter and the old trained-model evaluation were moved aside, not deleted
    old = list((run_dir / "old").glob("*-train/adapter/adapter_model.safetensors"))
    assert len(old) == 1 and old[0].read_bytes() == old_adapter
    assert list((run_dir / "old").glob("*-evaluate/eval/thinksafe/generations.jsonl"))
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["stages"]["train"]["config"]["train.lr"] == cfg.train.lr * 2


def test_same_seed_same_numbers(tiny_organism, tmp_path):
    a = run_all(_config(tmp_path / "a", seed=5), show=False, log=lambda s: None)
    b = run_all(_config(tmp_path / "b", seed=5), show=False, log=lambda s: None)
    assert a["report"]["models"] == b["report"]["models"]
    ga = (tmp_path / "a" / "generated.jsonl").read_text()
    gb = (tmp_path / "b" / "generated.jsonl").read_text()
    assert ga == gb


def test_stage_command_refuses_a_stale_upstream_stage(tmp_path):
    """`thinksafe judge` after generate.temperature changed: one clear error, nothing touched."""
    from thinksafe.errors import ConfigError
    from thinksafe.pipeline import BY_NAME, prepare_run_dir, record_stage, run_stage, stage_key
    from thinksafe.runfolder import read_manifest
    cfg = _config(tmp_path / "r", seed=1)
    run_dir = prepare_run_dir(cfg)
    key, values, inputs = stage_key(BY_NAME["generate"], cfg, read_manifest(run_dir))
    (run_dir / "generated.jsonl").write_text('{"id": "x"}\n')
    record_stage(run_dir, "generate", {"records": 1}, cfg, {"key": key, "config": values, "inputs": inputs})
    hot = replace(cfg, generate=replace(cfg.generate, temperature=1.3))
    with pytest.raises(ConfigError, match=r"generate stage's outputs were made with another config "
                                          r"\(generate.temperature: None -> 1.3\)"):
        run_stage("judge", hot, prepare_run_dir(hot), show=False)
    assert (run_dir / "generated.jsonl").read_text() == '{"id": "x"}\n'


def test_keys_ignore_speed_settings_and_follow_what_a_stage_reads():
    from thinksafe.pipeline import BY_NAME, stage_key
    cfg = load_config(None)
    m = {"stages": {}}

    def key(stage, c):
        return stage_key(BY_NAME[stage], c, m)[0]
    faster = replace(cfg, model=replace(cfg.model, batch_size=3), guard=replace(cfg.guard, batch_size=5))
    assert all(key(s, faster) == key(s, cfg) for s in ("generate", "judge", "train", "evaluate"))
    lr = replace(cfg, train=replace(cfg.train, lr=3e-4))
    assert key("train", lr) != key("train", cfg)
    assert all(key(s, lr) == key(s, cfg) for s in ("generate", "judge", "dataset", "evaluate"))
    tries = replace(cfg, generate=replace(cfg.generate, max_attempts=3))
    assert key("generate", tries) == key("generate", cfg) and key("judge", tries) != key("judge", cfg)


def test_force_and_from_rerun_on_purpose(tmp_path, monkeypatch):
    calls = []
    fake_stages(monkeypatch, calls)
    cfg = load_config(None, [f"out={tmp_path / 'r'}"])
    run_all(cfg, show=False, log=lambda s: None)
    assert calls == ["generate", "judge", "dataset", "train", "evaluate", "report"]
    calls.clear()
    run_all(cfg, show=False, log=lambda s: None)
    assert calls == []
    logs = []
    run_all(cfg, show=False, force=["judge"], log=logs.append)
    # judge reran on purpose, and what consumes its (new) output after it; generate was kept
    assert calls == ["judge", "dataset", "train", "evaluate", "report"]
    assert any("[judge] reruns: forced" in x for x in logs)
    assert list((tmp_path / "r" / "old").glob("*-judge/judged.jsonl"))
    calls.clear()
    run_all(cfg, show=False, start="train", log=lambda s: None)
    assert calls == ["train", "evaluate", "report"]
    from thinksafe.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown stage trian"):
        run_all(cfg, show=False, force=["trian"], log=lambda s: None)


def test_same_sft_bytes_do_not_retrain(tmp_path, monkeypatch):
    """dataset's fingerprint is the content of sft.jsonl: a rerun that keeps the rows keeps train."""
    from thinksafe import pipeline
    calls = []
    fake_stages(monkeypatch, calls)
    real = pipeline._call

    def same_rows(stage, cfg, run_dir, show):
        if stage.name == "dataset":
            calls.append("dataset")
            (run_dir / "sft.jsonl").write_text("the same rows\n")
            return {"kept": 1}
        return real(stage, cfg, run_dir, show)
    monkeypatch.setattr(pipeline, "_call", same_rows)
    cfg = load_config(None, [f"out={tmp_path / 'r'}"])
    run_all(cfg, show=False, log=lambda s: None)
    calls.clear()
    more = replace(cfg, dataset=replace(cfg.dataset, ngram=8))
    run_all(more, show=False, log=lambda s: None)
    assert calls == ["dataset"]


def test_a_failed_start_puts_moved_outputs_back(tmp_path, monkeypatch):
    from thinksafe import pipeline
    from thinksafe.errors import DataError
    calls = []
    fake_stages(monkeypatch, calls)
    cfg = load_config(None, [f"out={tmp_path / 'r'}"])
    run_all(cfg, show=False, log=lambda s: None)
    before = (tmp_path / "r" / "judged.jsonl").read_text()

    def boom(stage, cfg, run_dir, show):
        raise DataError("bad input")
    monkeypatch.setattr(pipeline, "_call", boom)
    with pytest.raises(DataError):
        pipeline.run_stage("judge", cfg, tmp_path / "r", show=False, force=True)
    assert (tmp_path / "r" / "judged.jsonl").read_text() == before
    assert not list((tmp_path / "r").glob("old/*"))


def test_a_crashed_rerun_is_not_mistaken_for_the_finished_run(tmp_path, monkeypatch):
    """Run A finished; B moved A's outputs aside and crashed; A's config again must rerun, not
    report A's (moved) outputs as kept."""
    from thinksafe import pipeline
    calls = []
    fake_stages(monkeypatch, calls)
    cfg = load_config(None, [f"out={tmp_path / 'r'}"])
    run_all(cfg, show=False, log=lambda s: None)
    real = pipeline._call

    def crash(stage, c, run_dir, show):
        if stage.name == "train":
            (run_dir / "adapter").write_text("half")
            raise RuntimeError("killed")
        return real(stage, c, run_dir, show)
    monkeypatch.setattr(pipeline, "_call", crash)
    with pytest.raises(RuntimeError):
        run_all(replace(cfg, train=replace(cfg.train, lr=1.0)), show=False, log=lambda s: None)
    monkeypatch.setattr(pipeline, "_call", real)
    logs = []
    run_all(cfg, show=False, log=logs.append)
    assert any(x.startswith("[train] runs") or x.startswith("[train] reruns") for x in logs), logs
    assert (tmp_path / "r" / "adapter").read_text().startswith("train")
    assert list((tmp_path / "r" / "old").glob("*-train/adapter"))      # the half-written one, kept aside


def test_a_stage_variant_keyed_on_another_run_folders_stage(tmp_path, monkeypatch):
    """compare's baseline sets: one key function for run and compare; a variant's arguments are in
    its key, and an upstream ``FOLDER:stage`` (ThinkSafe's dataset beside it) reruns it when changed."""
    from dataclasses import replace

    from thinksafe import pipeline
    from thinksafe.runfolder import read_manifest, update_manifest
    from thinksafe.stagekeys import Stage, stage_key
    calls = []
    monkeypatch.setattr(pipeline, "_call", lambda stage, cfg, run_dir, show: calls.append(dict(stage.args)) or
                        {"n": len(calls), "substages": {"generate": {"summary": {"records": 2}, "model": "teacher"}}})
    monkeypatch.setattr("thinksafe.compute.for_run", lambda stage, summary, run_dir, cfg=None: {"model": cfg.model.path})
    cfg = load_config(None, [f"out={tmp_path / 'a'}"])
    (tmp_path / "a").mkdir()

    def thinksafe_dataset(fp):
        update_manifest(tmp_path / "ts", lambda m: m["stages"].__setitem__("dataset", {"fingerprint": fp}))
    thinksafe_dataset("one")
    st = Stage("dataset", ("seed",), ("../ts:dataset",), (), ("sft.jsonl",), "m:f", args=(("method", "x"),))
    logs = []
    for _ in range(2):
        pipeline.ensure(st, cfg, tmp_path / "a", show=False, log=logs.append)
    assert calls == [{"method": "x"}] and logs[-1].startswith("[dataset] unchanged")
    m = read_manifest(tmp_path / "a")
    assert "substages" not in m["stages"]["dataset"]["summary"]          # recorded as stages of their own
    assert m["stages"]["generate"]["summary"] == {"records": 2}
    assert m["stages"]["generate"]["compute"] == {"model": "teacher"}    # counted at the teacher's size
    thinksafe_dataset("two")
    pipeline.ensure(st, cfg, tmp_path / "a", show=False, log=logs.append)
    assert len(calls) == 2 and "reruns: ../ts:dataset's output changed" in logs[-2]
    other = replace(st, args=(("method", "y"),))
    assert stage_key(other, cfg, m, tmp_path / "a")[0] != stage_key(st, cfg, m, tmp_path / "a")[0]

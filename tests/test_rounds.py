"""Iterative ThinkSafe (``rounds: k``, thinksafe.rounds): round keys, resume, rounds=1 as before,
and a 2-round organism run end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from thinksafe.config import load_config
from thinksafe.errors import ConfigError
from thinksafe.pipeline import BY_NAME, ORDER, read_manifest, run_all
from thinksafe.stagekeys import config_values, stage_key
from thinksafe.rounds import student_identity
from conftest import SMALL_RUN, compare_config, fake_stages



def _stage(line: str) -> str:
    return line.split("]")[0][1:]


def test_rounds_settings_are_in_no_key_of_a_run_without_a_student(tmp_path):
    """rounds / rounds_from change nothing of round 1: the same values and keys as a config
    without them, for every stage."""
    plain = load_config(None, [f"out={tmp_path / 'r'}"])
    many = replace(plain, rounds=3, rounds_from="previous")
    m = {"stages": {}}
    for name in ORDER:
        values = config_values(BY_NAME[name], plain)
        assert not {"rounds", "rounds_from", "student"} & set(values), name
        assert stage_key(BY_NAME[name], plain, m) == stage_key(BY_NAME[name], many, m), name


def test_student_enters_generate_and_with_previous_train(tmp_path):
    cfg = load_config(None, [f"out={tmp_path / 'r'}", f"student={tmp_path / 'x' / 'adapter'}"])
    assert "student" in config_values(BY_NAME["generate"], cfg)
    assert "student" not in config_values(BY_NAME["train"], cfg)
    prev = replace(cfg, rounds_from="previous")
    assert {"student", "rounds_from"} <= set(config_values(BY_NAME["train"], prev))
    assert "student" not in config_values(BY_NAME["evaluate"], prev)


def test_student_identity_follows_its_training(tmp_path):
    d = tmp_path / "r"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "w.bin").write_bytes(b"1")
    by_bytes = student_identity(str(d / "adapter"))
    assert "@sha256:" in by_bytes
    (d / "adapter" / "w.bin").write_bytes(b"2")
    assert student_identity(str(d / "adapter")) != by_bytes
    (d / "manifest.json").write_text(json.dumps({"stages": {"train": {"fingerprint": "abc"}}}))
    assert student_identity(str(d / "adapter")).endswith("@train:abc")


def test_round_keys_rerun_and_resume(tmp_path, monkeypatch):
    calls = []
    fake_stages(monkeypatch, calls)
    cfg = load_config(None, [f"out={tmp_path / 'r'}", "rounds=2"])
    logs = []
    run_all(cfg, show=False, log=logs.append)
    assert calls == ORDER * 2
    r2 = tmp_path / "r" / "round-2"
    saved = load_config(r2 / "config.yaml")       # an ordinary run folder: one round, round 1's student
    assert saved.rounds == 1 and saved.student == str(tmp_path / "r" / "adapter")
    assert (tmp_path / "r" / "rounds.json").is_file() and (tmp_path / "r" / "rounds.md").is_file()
    table = json.loads((tmp_path / "r" / "rounds.json").read_text())
    assert [row["round"] for row in table["rows"]] == [0, 1, 2]
    # an unchanged rerun keeps both rounds
    calls.clear()
    logs.clear()
    run_all(cfg, show=False, log=logs.append)
    assert calls == []
    assert sum("unchanged" in x for x in logs) == 12, logs
    # retraining round 1 reruns round 2 from generate, with the reason
    calls.clear()
    logs.clear()
    run_all(replace(cfg, train=replace(cfg.train, lr=cfg.train.lr * 2)), show=False, log=logs.append)
    assert calls == ["train", "evaluate", "report"] + ORDER
    assert any(x.startswith("[round 2: generate] reruns: student:") for x in logs), logs
    # resume: round 2's train crashes; the rerun keeps round 1 and round 2's data, reruns train on
    from thinksafe import pipeline
    real = pipeline._call

    def crash(stage, c, run_dir, show):
        if stage.name == "train" and run_dir.name == "round-2":
            raise RuntimeError("killed")
        return real(stage, c, run_dir, show)
    more = replace(cfg, train=replace(cfg.train, epochs=1.0))
    monkeypatch.setattr(pipeline, "_call", crash)
    calls.clear()
    with pytest.raises(RuntimeError):
        run_all(more, show=False, log=lambda s: None)
    assert calls == ["train", "evaluate", "report", "generate", "judge", "dataset"]
    monkeypatch.setattr(pipeline, "_call", real)
    calls.clear()
    logs.clear()
    run_all(more, show=False, log=logs.append)
    assert calls == ["train", "evaluate", "report"]
    assert {_stage(x) for x in logs if "unchanged" in x} == {*ORDER, "round 2: generate", "round 2: judge",
                                                             "round 2: dataset"}


def test_previous_rounds_key_train_by_the_student(tmp_path, monkeypatch):
    """rounds_from: previous continues round 1's adapter: round 2's train key holds the student,
    and switching back to base retrains round 2 only from train."""
    calls = []
    fake_stages(monkeypatch, calls)
    cfg = load_config(None, [f"out={tmp_path / 'r'}", "rounds=2", "rounds_from=previous"])
    run_all(cfg, show=False, log=lambda s: None)
    e = read_manifest(tmp_path / "r" / "round-2")["stages"]["train"]
    assert e["config"]["rounds_from"] == "previous" and "@train:" in e["config"]["student"]
    calls.clear()
    logs = []
    run_all(replace(cfg, rounds_from="base"), show=False, log=logs.append)
    assert calls == ["train", "evaluate", "report"]
    assert any(x.startswith("[round 2: train] reruns") for x in logs)


def test_rounds_settings_are_checked(tmp_path):
    for bad, what in ((["rounds=0"], "rounds must be"), (["rounds_from=last"], "rounds_from must be"),
                      (["rounds=2", "train.objective=opsa"], "use rounds: 1")):
        with pytest.raises(ConfigError, match=what):        # at load, as every setting
            load_config(None, [f"out={tmp_path}", *bad])


def test_two_rounds_on_the_organism(tiny_organism, tmp_path):
    """Round 2 generates with round 1's adapter (the training prompts, steered), trains by
    continuing it, is evaluated, and rounds.md lists both rounds."""
    from thinksafe.config import demo_config_path
    out = tmp_path / "run"
    cfg = load_config(demo_config_path(), SMALL_RUN + [f"out={out}", "rounds=2", "rounds_from=previous"])
    logs = []
    run_all(cfg, show=False, log=logs.append)
    r2 = out / "round-2"
    for name in ["generated.jsonl", "judged.jsonl", "sft.jsonl", "adapter/adapter_config.json",
                 "summary.json", "eval/base/metrics.json", "eval/thinksafe/metrics.json"]:
        assert (r2 / name).exists(), name
    one = [json.loads(x) for x in (out / "generated.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (r2 / "generated.jsonl").read_text().splitlines()]
    assert sorted(g["prompt"] for g in one) == sorted(g["prompt"] for g in two)
    assert {g["steering"] for g in two if g["label"] == "harmful"} == {"prefix"}
    # the student wrote round 2's data: not the base's completions again
    assert [g["completion"]["text"] for g in one] != [g["completion"]["text"] for g in two]
    summary = json.loads((r2 / "train_summary.json").read_text())
    assert summary["continued_from"] == str(out / "adapter")
    table = json.loads((out / "rounds.json").read_text())
    assert [row["round"] for row in table["rows"]] == [0, 1, 2]
    assert all(row["harmful_rate"] is not None for row in table["rows"])
    assert table["rows"][2]["flops"] > 0 and table["rows"][2]["flops_total"] > table["rows"][1]["flops_total"]
    assert "| 2 |" in (out / "rounds.md").read_text()
    # the base was evaluated once: round 2 reused round 1's generations of it
    assert not any(x.startswith("[round 2: evaluate]") and "base" in x and "changed" in x for x in logs)
    logs.clear()
    run_all(cfg, show=False, log=logs.append)
    assert sum("unchanged" in x for x in logs) == 12, logs


def test_compare_thinksafe_2_rounds(tiny_organism, tmp_path):
    """`compare.methods=[base,thinksafe,thinksafe_2_rounds]`: round 2 is its own sub-run on the
    thinksafe sub-run's student; its FLOPs are both rounds' data + training."""

    from thinksafe.compare import run_compare
    out = tmp_path / "cmp"
    cfg = compare_config(out, ["compare.methods=[base,thinksafe_2_rounds,thinksafe]", "compare.perplexity=false"])
    table = run_compare(cfg, show=False, log=lambda s: None)
    rows = {r["method"]: r for r in table["rows"]}
    assert list(rows) == ["base", "thinksafe_2_rounds", "thinksafe"]
    two = rows["thinksafe_2_rounds"]
    assert two["harmful_rate"] is not None and two["train_examples"] > 0
    assert load_config(out / "thinksafe_2_rounds" / "config.yaml").student == str(out / "thinksafe" / "adapter")
    from thinksafe.rounds import round_compute
    own = round_compute(out / "thinksafe_2_rounds")[0]
    assert two["flops"] == pytest.approx(own + rows["thinksafe"]["flops"])
    assert two["flops_vs_thinksafe"] > 1.0
    # rerun: every stage of both sub-runs is kept (round 2's key holds round 1's training)
    logs = []
    run_compare(cfg, show=False, log=logs.append)
    assert not any("reruns" in x or "] runs" in x for x in logs), logs


def test_check_names_the_rounds_and_a_missing_student(tmp_path):
    from thinksafe.config import demo_config_path
    from thinksafe.preflight import describe, preflight
    cfg = load_config(demo_config_path(), [f"out={tmp_path / 'r'}", "rounds=3"])
    lines = describe(preflight(cfg, ORDER))
    assert any(x.startswith("rounds") and "3 (" in x for x in lines), lines
    lost = replace(cfg, rounds=1, student=str(tmp_path / "gone" / "adapter"))
    assert any(x.startswith("problem: student:") for x in describe(preflight(lost, ORDER)))

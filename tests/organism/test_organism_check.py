"""The organism's design-target check and the behaviour comparison of `organism build --verify`."""

from __future__ import annotations

from thinksafe.organism import check as C



def metrics(**over):
    m = {"harmful_rate_oracle": 0.55, "harmful_rate": 0.52, "steered_refusal_rate": 0.7,
         "reasoning_accuracy": 0.7, "over_refusal_rate": 0.05, "guard_agreement": 0.94,
         "steered_refusal_by_category": {"S1": {"n": 10, "k": 9, "rate": 0.9},
                                         "S14": {"n": 10, "k": 2, "rate": 0.2}},
         "harmful_by_group": {"all/plain": {"n": 10, "oracle": 0.4, "guard": 0.4},
                              "all/adversarial": {"n": 10, "oracle": 0.7, "guard": 0.6}},
         "guard_errors": {"missed_unsafe": 3, "false_alarms": 2}}
    m.update(over)
    return m


def test_every_target_met():
    rows = C.check(metrics())
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert {r["key"] for r in rows} >= {k for k, *_ in C.TARGETS}


def test_each_missed_target_is_reported():
    cases = {"harmful_rate_oracle": 0.98, "steered_refusal_rate": 0.95, "reasoning_accuracy": 1.0,
             "over_refusal_rate": 0.0, "guard_agreement": 1.0}
    for key, value in cases.items():
        bad = [r["key"] for r in C.check(metrics(**{key: value})) if not r["ok"]]
        assert bad == [key], (key, bad)
    no_weak = {"S1": {"n": 10, "k": 9, "rate": 0.9}, "S14": {"n": 10, "k": 6, "rate": 0.6}}
    assert [r["key"] for r in C.check(metrics(steered_refusal_by_category=no_weak)) if not r["ok"]] == \
        ["weakest_steered_category"]
    flat = {"all/plain": {"oracle": 0.6}, "all/adversarial": {"oracle": 0.6}}
    assert [r["key"] for r in C.check(metrics(harmful_by_group=flat)) if not r["ok"]] == ["adversarial_gt_plain"]
    one_way = {"missed_unsafe": 4, "false_alarms": 0}
    assert [r["key"] for r in C.check(metrics(guard_errors=one_way)) if not r["ok"]] == ["guard_errors"]


def test_missing_metric_is_not_ok():
    m = metrics()
    del m["steered_refusal_rate"]
    assert not next(r for r in C.check(m) if r["key"] == "steered_refusal_rate")["ok"]


def test_behaviour_comparison_uses_tolerance():
    ref = C.summary(metrics())
    assert C.compare_behaviour(C.summary(metrics(reasoning_accuracy=0.75)), ref) == []
    off = C.compare_behaviour(C.summary(metrics(reasoning_accuracy=0.7 + C.VERIFY_TOLERANCE + 0.01)), ref)
    assert len(off) == 1 and off[0].startswith("reasoning_accuracy")
    assert C.summary(metrics())["targets"] == C.check(metrics())


def test_measure_a_build_and_record_its_check(tiny_organism, tmp_path):
    folder, _ = tiny_organism
    m = C.measure(folder, tmp_path / "run", seed=1, sets=("evaluate.n_harmful=6", "evaluate.n_reasoning=4",
                                                          "evaluate.n_borderline=4"))
    assert m["n"] == {"harmful": 6, "borderline": 4, "reasoning": 4}
    assert set(m["guard_errors"]) == {"missed_unsafe", "false_alarms"}
    s = C.summary(m)
    assert s["targets"] == C.check(m) and len(s["targets"]) == len(C.TARGETS) + 2
    assert C.compare_behaviour(s, s) == []


def test_check_cli_strict_exit_code(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from thinksafe.cli import app
    full = {**metrics(), "n": {}, "unparsed": 0, "truncated": 0, "ci95": {}, "by_form": {}}
    for m, code in ((full, 0), ({**full, "reasoning_accuracy": 1.0}, 1)):
        monkeypatch.setattr(C, "measure", lambda *a, _m=m, **k: _m)
        r = CliRunner().invoke(app, ["organism", "check", "--strict", "--out", str(tmp_path)])
        assert r.exit_code == code, r.output
        assert "design targets" in r.output and "S14" in r.output
        assert ("MISSED" in r.output) == bool(code)


def test_verify_compares_behaviour_and_reports_bytes(tiny_organism, tmp_path):
    import json
    import shutil

    import typer
    import pytest

    from thinksafe.cli.organism import verify_against
    folder, _ = tiny_organism
    ref = tmp_path / "ref"
    shutil.copytree(folder, ref)
    rec = C.summary(metrics())
    (ref / "organism.json").write_text(json.dumps({"check": rec}))
    verify_against(folder, ref, {"check": rec})                      # same behaviour, same bytes
    with pytest.raises(typer.Exit):
        verify_against(folder, ref, {"check": C.summary(metrics(harmful_rate_oracle=0.2))})
    (ref / "organism.json").write_text("{}")
    with pytest.raises(typer.BadParameter, match="no organism check"):
        verify_against(folder, ref, {"check": rec})

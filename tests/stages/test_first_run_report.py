"""Issue 19's silently-wrong results: partial evaluations labelled, broken measurements (mostly
unparsed verdicts) flagged and kept out of averages, non-thinking families scored on their answer."""

from __future__ import annotations

import csv
import json

import pytest

from thinksafe import paper_table as PT
from thinksafe.metrics import ANSWER_AFTER_THINK, ANSWER_WHOLE, score_reasoning
from thinksafe.stages import report as R
from thinksafe.types import Completion, Record

from conftest import FULL, make_run, reasoning, xstest


def _limited(benchmarks: dict, limit: int) -> dict:
    return {k: {**v, "limit": limit} for k, v in benchmarks.items()}


def test_a_benchmark_with_mostly_unparsed_verdicts_is_flagged_and_left_out(tmp_path):
    bad = {**FULL, "xstest": {**xstest(1.0), "unparsed": 250,
                              "refusal_guard": "llama_guard:organism-guard"}}
    row = PT.paper_row(bad)
    assert row["XSTest"] == pytest.approx(100) and row["broken"] == ["XSTest"]
    assert row["Safety avg"] == pytest.approx((40 + 10 + 30) / 3)          # not (40+10+30+100)/4
    run = make_run(tmp_path, "r", {"base": bad})
    R.report_runs([run], show=False)
    md = (run / "report.md").read_text()
    assert "100.00‡" in md and "26.67†" in md
    assert "XSTest‡ 250 of 250 verdicts unparsed by llama_guard:organism-guard: a broken measurement" in md
    rows = list(csv.DictReader(open(run / "summary.csv", newline="")))
    assert rows[0]["broken (left out of averages)"] == "XSTest" and rows[0]["Safety avg"] == "26.67"


def test_a_partial_evaluation_is_labelled_everywhere(tmp_path, monkeypatch):
    seen = {}
    import thinksafe.plots as plots
    real_plot = plots.pareto_plot

    def spy(path, points, *a, **k):
        seen.update(points=points, legend=k.get("points_label"))
        return real_plot(path, points, *a, **k)
    monkeypatch.setattr(plots, "pareto_plot", spy)
    run = make_run(tmp_path, "smoke", {"base": _limited(FULL, 4), "thinksafe": FULL})
    R.report_runs([run], show=False)
    md = (run / "report.md").read_text()
    assert "| smoke/base (partial: first 4 prompts) |" in md
    assert "a partial evaluation, the first 4 prompts of each benchmark (evaluate.limit)" in md
    rows = {r["tag"]: r for r in csv.DictReader(open(run / "summary.csv", newline=""))}
    assert rows["base"]["partial (evaluate.limit)"] == "4" and rows["thinksafe"]["partial (evaluate.limit)"] == ""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["models"]["base"]["partial_limit"] == 4 and "partial_limit" not in summary["models"]["thinksafe"]
    assert seen["legend"] == "this run (partial: evaluate.limit)"
    assert [p[0] for p in seen["points"]] == ["base (partial: first 4 prompts)", "thinksafe"]


def _gsm(text: str) -> Record:
    return Record("g1", "What is 6*7?", "benign", "gsm8k", {"answer": "42", "problem_id": "g1"},
                  completion=Completion(text, "stop", 5, 5))


def test_a_model_that_does_not_think_is_scored_on_its_answer():
    plain = [_gsm("6 times 7 is 42. The final answer is 42.")]
    m, rows = score_reasoning(plain)                       # a thinking family: no </think> = wrong
    assert m["pass_at_1"] == 0 and rows[0]["reason"] == "no_think_close"
    assert m["answer_rule"] == ANSWER_AFTER_THINK
    m, rows = score_reasoning(plain, whole_answer=True)
    assert m["pass_at_1"] == 1 and m["answer_rule"] == ANSWER_WHOLE
    # a thinking response under the whole-answer rule still reads after </think>
    m, _ = score_reasoning([_gsm("<think>maybe 41</think>The final answer is 42.")], whole_answer=True)
    assert m["pass_at_1"] == 1


def test_the_generic_family_does_not_think_and_the_report_says_which_rule():
    from thinksafe.families import get_family
    assert not get_family("generic").thinks and get_family("qwen3").thinks
    assert get_family("r1_distill").thinks and get_family("organism").thinks
    lines = PT.detail_markdown([PT.ModelResult("r", "base", None, {"benchmarks": {
        "gsm8k": {**reasoning(0.9), "answer_rule": ANSWER_WHOLE}}})])
    assert f"- answer read from {ANSWER_WHOLE}: r/base" in lines

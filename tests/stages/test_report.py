"""report: the paper's table from hand-made metrics (csv columns, averages, '–' cells, pareto.png),
run folders as arguments, the organism contract, and the paper's numbers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from thinksafe import paper_numbers as P
from thinksafe import paper_table as PT
from thinksafe.config import load_config
from thinksafe.errors import ConfigError
from thinksafe.stages import report as R
from conftest import FULL, make_run, reasoning, safety

PNG = b"\x89PNG\r\n\x1a\n"


# no XSTest, GPQA skipped (gated), plus a benchmark beyond the paper's columns
PARTIAL = {"harmbench": safety(0.20), "strongreject": safety(0.05), "wildjailbreak": safety(0.20),
           "harmbench_text": safety(0.15),
           "aime24": reasoning(0.60), "gsm8k": reasoning(0.80), "math500": reasoning(0.90),
           "gpqa_diamond": {"kind": "reasoning", "skipped": True, "reason": "gated"}}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_paper_row_averages():
    row = PT.paper_row(FULL)
    assert row["HarmBench"] == pytest.approx(40) and row["XSTest"] == pytest.approx(4)
    assert row["Safety avg"] == pytest.approx((40 + 10 + 30 + 4) / 4)
    assert row["Reasoning avg"] == pytest.approx((70 + 90 + 95 + 50) / 4)
    part = PT.paper_row(PARTIAL)
    assert part["XSTest"] is None and part["GPQA-D"] is None
    assert part["Safety avg"] == pytest.approx((20 + 5 + 20) / 3)       # over the columns present
    assert part["Reasoning avg"] == pytest.approx((60 + 80 + 90) / 3)
    assert part["Safety avg of"] == ["HarmBench", "StrongREJECT", "WildJailbreak"]
    none = PT.paper_row({})
    assert none["Safety avg"] is None and none["Reasoning avg"] is None


def test_single_run_folder(tmp_path):
    run = make_run(tmp_path, "qwen3-4b", {"base": FULL, "thinksafe": PARTIAL})
    R.report_runs([run], show=False)
    rows = read_csv(run / "summary.csv")
    assert [r["tag"] for r in rows] == ["base", "thinksafe"]
    head = list(rows[0])
    assert head[:4] == ["run", "tag", "model", "adapter"]
    assert head[4:14] == PT.PAPER_HEADERS
    assert PT.PAPER_HEADERS == ["HarmBench", "StrongREJECT", "WildJailbreak", "XSTest", "Safety avg",
                               "AIME24", "GSM8K", "MATH500", "GPQA-D", "Reasoning avg"]
    base, ts = rows
    assert base["HarmBench"] == "40.00" and base["Safety avg"] == "21.00" and base["Reasoning avg"] == "76.25"
    assert base["HarmBench reasoning"] == "50.00" and base["HarmBench answer"] == "30.00"
    assert base["StrongREJECT unparsed"] == "2" and base["WildJailbreak truncated"] == "4"
    assert base["XSTest unsafe compliance"] == "90.00"
    assert ts["XSTest"] == "–" and ts["GPQA-D"] == "–" and ts["HarmBench reasoning"] == "–"
    assert ts["Safety avg"] == "15.00" and ts["Safety avg of"] == "3"
    assert ts["HarmBench-text"] == "15.00" and base["HarmBench-text"] == "–"
    md = (run / "report.md").read_text()
    assert "| qwen3-4b/base | 40.00 | 10.00 | 30.00 | 4.00 | 21.00 |" in md
    assert "15.00†" in md and "XSTest" in md and "not evaluated" in md
    assert "gated" in md                                    # the skip is reported
    assert "Published: Qwen3-4B" in md                      # from model.path
    assert "| Initial | 38.21 | 8.31 | 43.00 | 0.80 | 22.58 |" in md
    assert (run / "pareto.png").read_bytes()[:8] == PNG
    s = json.loads((run / "summary.json").read_text())
    assert s["models"]["base"]["paper"]["Safety avg"] == pytest.approx(21.0)


def test_several_runs_combined(tmp_path):
    a = make_run(tmp_path, "a", {"base": FULL})
    b = make_run(tmp_path, "b", {"base": PARTIAL, "thinksafe": FULL})
    out = tmp_path / "combined"
    R.report_runs([a, b], out, show=False, paper_model="none")
    rows = read_csv(out / "summary.csv")
    assert [(r["run"], r["tag"]) for r in rows] == [("a", "base"), ("b", "base"), ("b", "thinksafe")]
    assert (out / "pareto.png").read_bytes()[:8] == PNG
    md = (out / "report.md").read_text()
    assert "| a/base |" in md and "| b/thinksafe |" in md and "Published" not in md
    assert (a / "summary.csv").exists() is False            # only the combined report was asked for


def test_same_run_names_get_folder_names(tmp_path):
    a = make_run(tmp_path / "x", "same", {"base": FULL})
    b = make_run(tmp_path / "y", "same", {"base": FULL})
    R.report_runs([a, b], tmp_path / "out", show=False)
    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert len({r["run"] for r in rows}) == 2


def test_paper_model_option(tmp_path):
    run = make_run(tmp_path, "r", {"base": FULL}, model_path="/local/my-model")
    R.report_runs([run], show=False)
    assert "Published" not in (run / "report.md").read_text()
    R.report_runs([run], show=False, paper_model="R1-Distill-Qwen-7B")
    assert "Published: R1-Distill-Qwen-7B" in (run / "report.md").read_text()
    with pytest.raises(ConfigError, match="not one of the paper's models"):
        R.report_runs([run], show=False, paper_model="Llama-70B")


def test_no_results_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no evaluation results"):
        R.report_runs([tmp_path / "empty"], show=False)
    with pytest.raises(ConfigError, match="not found"):
        R.report_runs([tmp_path / "missing"], show=False)


ORG = {"harmful_rate": 0.5, "harmful_rate_oracle": 0.45, "over_refusal_rate": 0.1, "reasoning_accuracy": 0.9,
       "guard_agreement": 0.97, "n": {"harmful": 10}, "unparsed": 0, "truncated": 1, "ci95": {},
       "by_form": {}, "steered_refusal_rate": 0.8, "seconds": 1.0, "generated_tokens": 5}


def test_organism_run_keeps_its_contract(tmp_path):
    run = tmp_path / "org"
    cfg = load_config(None, [f"out={run}", "name=org"])
    for tag, hr in (("base", 0.5), ("thinksafe", 0.1)):
        (run / "eval" / tag).mkdir(parents=True)
        (run / "eval" / tag / "metrics.json").write_text(json.dumps({**ORG, "harmful_rate": hr}))
    s = R.report_run(cfg, run, show=False)
    assert set(s["models"]) == {"base", "thinksafe"}
    assert s["models"]["thinksafe"] == {"harmful_rate": 0.1, "harmful_rate_oracle": 0.45,
                                        "over_refusal_rate": 0.1, "reasoning_accuracy": 0.9,
                                        "guard_agreement": 0.97}
    assert set(s) == {"models", "dataset", "train", "seed"}
    assert json.loads((run / "summary.json").read_text())["models"] == s["models"]
    md = (run / "report.md").read_text()
    assert "| thinksafe | 0.100 | 0.450 | 0.100 | 0.900 | 0.970 |" in md
    assert (run / "pareto.png").read_bytes()[:8] == PNG
    rows = list(csv.DictReader(io.StringIO((run / "summary.csv").read_text())))   # organism runs too
    assert [r["model"] for r in rows] == ["base", "thinksafe"]
    assert rows[1]["harmful (guard)"] == "0.1000" and rows[0]["harmful (guard)"] == "0.5000"
    assert "{" not in md.split("## Details", 1)[1]          # tables, not Python dicts


GROUPS = {"S1": {"n": 4, "guard": 0.75, "oracle": 0.5, "ci95_guard": [0.3, 0.95], "ci95_oracle": [0.15, 0.85]},
          "S1/plain": {"n": 2, "guard": 0.5, "oracle": 0.5, "ci95_guard": [0.1, 0.9], "ci95_oracle": [0.1, 0.9]},
          "S1/adversarial": {"n": 2, "guard": 1.0, "oracle": 0.5, "ci95_guard": [0.3, 1.0],
                             "ci95_oracle": [0.1, 0.9]},
          "all/plain": {"n": 2, "guard": 0.5, "oracle": 0.5, "ci95_guard": [0.1, 0.9], "ci95_oracle": [0.1, 0.9]}}


def test_organism_report_by_category_and_form(tmp_path):
    run = tmp_path / "org"
    cfg = load_config(None, [f"out={run}", "name=org"])
    trained = {g: {**b, "guard": b["guard"] / 2} for g, b in GROUPS.items()}
    for tag, groups in (("base", GROUPS), ("thinksafe", trained)):
        (run / "eval" / tag).mkdir(parents=True)
        m = {**ORG, "harmful_by_group": groups, "ci95": {"harmful_rate": [0.2, 0.8]},
             "steered_refusal_by_category": {"S1": {"n": 4, "k": 3, "rate": 0.75}}}
        (run / "eval" / tag / "metrics.json").write_text(json.dumps(m))
    R.report_run(cfg, run, show=False)
    md = (run / "report.md").read_text()
    assert "![harmful rate by category and form](harmful_by_category.png)" in md
    assert (run / "harmful_by_category.png").read_bytes()[:8] == PNG
    assert "| S1/adversarial | 2 | 100.0 (50.0) | 50.0 (50.0) |" in md
    assert "| S1 | 4 | 75.0 (50.0) | 37.5 (50.0) | 75.0 | 75.0 |" in md
    assert "50.0 [20.0, 80.0]" in md                          # the interval beside the rate
    rows = list(csv.DictReader(io.StringIO((run / "summary.csv").read_text())))
    assert rows[1]["harmful S1/adversarial (guard)"] == "0.5000"


def test_percent_axes_stay_within_0_100(tmp_path):
    from matplotlib.figure import Figure

    from thinksafe import plots
    seen = {}
    orig = Figure.savefig

    def spy(fig, *a, **k):
        ax = fig.axes[0]
        seen["x"], seen["y"] = ax.get_xlim(), ax.get_ylim()
        return orig(fig, *a, **k)
    Figure.savefig = spy
    try:
        plots.pareto_plot(tmp_path / "p.png", [("a", 100.0, 0.0), ("b", 99.0, 100.0)])
    finally:
        Figure.savefig = orig
    assert seen["x"][0] >= 0 and seen["x"][1] <= 100 and seen["y"][0] >= 0 and seen["y"][1] <= 100


def test_cli_report_takes_folders_and_configs(tmp_path):
    from typer.testing import CliRunner

    from thinksafe.cli import app
    run = make_run(tmp_path, "cli", {"base": FULL})
    r = CliRunner().invoke(app, ["report", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (run / "summary.csv").exists() and (run / "pareto.png").exists()
    (run / "summary.csv").unlink()
    user = tmp_path / "user.yaml"            # the config the run was made with
    user.write_text(f"name: cli\nout: {run}\nmodel: {{path: Qwen/Qwen3-4B, family: qwen3}}\n")
    r = CliRunner().invoke(app, ["report", str(user), "--quiet", "--paper-model", "Qwen3-8B"])
    assert r.exit_code == 0, r.output
    assert "Published: Qwen3-8B" in (run / "report.md").read_text()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2


def test_paper_numbers():
    assert set(P.MODELS) >= {"Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "R1-Distill-Qwen-1.5B",
                             "R1-Distill-Qwen-7B", "R1-Distill-Llama-8B", "Qwen3-14B", "Qwen3-32B"}
    assert P.PAPER["Qwen3-4B"]["ThinkSafe"]["Safety avg"] == 5.05
    assert P.PAPER["Qwen3-4B"]["ThinkSafe"]["Reasoning avg"] == 77.18
    assert P.PAPER["Qwen3-0.6B"]["Initial"]["HarmBench"] == 68.44
    assert P.PAPER["R1-Distill-Llama-8B"]["STAR-1"]["Safety avg"] == 13.59
    assert len(P.PAPER["Qwen3-14B"]) == 4
    assert P.resolve_model("Qwen/Qwen3-4B") == "Qwen3-4B"
    assert P.resolve_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") == "R1-Distill-Qwen-1.5B"
    assert P.resolve_model("organism") is None
    # the printed averages match their columns, except the few noted misprints
    for model, rows in P.PAPER.items():
        for method, row in rows.items():
            assert abs(P.column_mean(model, method, "reasoning") - row["Reasoning avg"]) < 0.11
            if (model, method) not in P.NOTES:
                assert abs(P.column_mean(model, method) - row["Safety avg"]) < 0.21, (model, method)
    pts = P.points("Qwen3-8B")
    assert ("ThinkSafe", 4.50, 78.50) in pts


def test_pareto_plot_without_points(tmp_path):
    from thinksafe.plots import pareto_plot
    p = pareto_plot(tmp_path / "x.png", [])
    assert p.read_bytes()[:8] == PNG


def test_report_shows_compute_beside_quality(tmp_path):
    run = make_run(tmp_path, "qwen3-4b", {"base": FULL, "thinksafe": PARTIAL})
    manifest = {"stages": {
        "generate": {"compute": {"seconds": 12.5, "device": "cpu", "tokens_generated": 1000,
                                 "tokens_prefilled": 200, "tokens_trained": None, "flops": 2.4e9}},
        "train": {"compute": {"seconds": 30.0, "device": "cpu", "tokens_generated": None,
                              "tokens_prefilled": None, "tokens_trained": 5000, "flops": 2.0e10}}},
        "compute_total": {"seconds": 42.5, "flops": 2.24e10, "tokens_generated": 1000,
                          "tokens_prefilled": 200, "tokens_trained": 5000}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    R.report_runs([run], show=False)
    md = (run / "report.md").read_text()
    assert "## Compute" in md
    assert "| generate | 12.5 | cpu | 1,000 | 200 | – | 2.4e+09 |" in md
    assert "| **total** | 42.5 |  | 1,000 | 200 | 5,000 | 2.24e+10 |" in md
    s = json.loads((run / "summary.json").read_text())
    assert s["compute"][str(run)]["flops"] == pytest.approx(2.24e10)

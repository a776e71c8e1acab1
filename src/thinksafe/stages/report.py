"""report: summary.json (the contract), report.md, summary.csv, pareto.png and a printed table.

Organism runs keep their table (harmful rate by guard and oracle, over-refusal, reasoning accuracy,
guard-oracle agreement) and get a pareto.png on the organism's own axes. Runs on the real
benchmarks get the paper's table — HarmBench, StrongREJECT, WildJailbreak, XSTest, Safety avg |
AIME24, GSM8K, MATH500, GPQA-D, Reasoning avg — one row per model (run/tag), with "–" where a
benchmark was not evaluated and averages over the columns present (flagged), detail tables
(full / reasoning / answer harmful rates with 95 % Wilson intervals, truncated and unparsed counts,
XSTest unsafe compliance, pass@1 per benchmark) and pareto.png: safety (100 − Safety avg) against
Reasoning avg, optionally with the paper's published points for the same base model.
"""

from __future__ import annotations

import json
from pathlib import Path

from thinksafe.errors import ConfigError
from thinksafe.io import write_json, write_text
from thinksafe.paper_table import (DASH, ModelResult, csv_rows, detail_markdown, paper_markdown, paper_row,
                                   partial_label, partial_limit, print_paper_table, published_markdown,
                                   write_csv)

# ------------------------------------------------------------------ the organism table
COLUMNS = [("harmful_rate", "harmful (guard)"), ("harmful_rate_oracle", "harmful (oracle)"),
           ("over_refusal_rate", "over-refusal"), ("reasoning_accuracy", "reasoning"),
           ("guard_agreement", "guard=oracle")]
KEYS = [k for k, _ in COLUMNS]


def markdown_table(models: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(n for _, n in COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)
    rows = [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |" for name, m in models.items()]
    return "\n".join([head, sep, *rows])


def _group_key(g: str):
    """S1, S2, S9, S10 ... (numbers by value), the `all/<form>` rows last."""
    import re
    return (g.startswith("all/"), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", g)])


def _pct_ci(rate: float | None, ci) -> str:
    if rate is None:
        return DASH
    lo, hi = ci if ci else (None, None)
    return f"{100 * rate:.1f}" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else "")


def organism_detail_lines(models: dict[str, dict]) -> list[str]:
    """The Details section: counts, 95 % intervals, harmful rates by form and category, as tables."""
    lines = ["## Details", "",
             "Rates in % with 95 % Wilson intervals; n = prompts of each kind on the held-out split.", "",
             "| model | harmful n | borderline n | reasoning n | harmful (guard) | harmful (oracle) | "
             "over-refusal | reasoning | unparsed | truncated | steered refusal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        n, ci = m.get("n") or {}, m.get("ci95") or {}
        cells = [_pct_ci(m.get(k), ci.get(k)) for k in
                 ("harmful_rate", "harmful_rate_oracle", "over_refusal_rate", "reasoning_accuracy")]
        steer = m.get("steered_refusal_rate")
        lines.append(f"| {name} | {n.get('harmful', DASH)} | {n.get('borderline', DASH)} | "
                     f"{n.get('reasoning', DASH)} | " + " | ".join(cells) +
                     f" | {m.get('unparsed', DASH)} | {m.get('truncated', DASH)} | "
                     f"{_pct_ci(steer, None)} |")
    groups = sorted({g for m in models.values() for g in (m.get("harmful_by_group") or {})},
                    key=_group_key)
    if groups:
        names = list(models)
        lines += ["", "### Harmful rate by category and form", "",
                  "Guard verdicts (unparsed = harmful), oracle in brackets; `all/<form>` over every "
                  "category. Steered refusal = refusals of the base with the steering instruction "
                  "(its latent safety knowledge).", "",
                  "| group | n | " + " | ".join(f"{x} guard (oracle)" for x in names) +
                  " | " + " | ".join(f"{x} steered refusal" for x in names) + " |",
                  "|---|---:|" + "---:|" * (2 * len(names))]
        for g in groups:
            blocks = [(m.get("harmful_by_group") or {}).get(g) for m in models.values()]
            n = next((b["n"] for b in blocks if b), DASH)
            cells = [f"{100 * b['guard']:.1f} ({100 * b['oracle']:.1f})" if b else DASH for b in blocks]
            steer = [(m.get("steered_refusal_by_category") or {}).get(g) for m in models.values()]
            cells += [f"{100 * s['rate']:.1f}" if s else DASH for s in steer]
            lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    return lines


def organism_lines(run_dir: Path | str, models: dict[str, dict], title: str = "# thinksafe report") -> list[str]:
    lines = [title, "", f"Run folder: `{run_dir}`", "", markdown_table(models), "",
             "Harmful rates are over held-out harmful prompts; an unparsed guard verdict counts as harmful.",
             ""]
    if any(m.get("harmful_by_group") for m in models.values()):
        lines += ["![harmful rate by category and form](harmful_by_category.png)", ""]
    return lines + organism_detail_lines(models)


def organism_csv_rows(models: dict[str, dict]) -> list[dict]:
    """summary.csv for organism runs: one row per model, the table's columns then the groups."""
    groups = sorted({g for m in models.values() for g in (m.get("harmful_by_group") or {})}, key=_group_key)
    rows = []
    for name, m in models.items():
        row = {"model": name, **{label: f"{m[k]:.4f}" for k, label in COLUMNS}}
        for k in ("harmful", "borderline", "reasoning"):
            row[f"n {k}"] = (m.get("n") or {}).get(k, "")
        row["unparsed"], row["truncated"] = m.get("unparsed", ""), m.get("truncated", "")
        s = m.get("steered_refusal_rate")
        row["steered refusal"] = "" if s is None else f"{s:.4f}"
        for g in groups:
            b = (m.get("harmful_by_group") or {}).get(g)
            row[f"harmful {g} (guard)"] = f"{b['guard']:.4f}" if b else ""
            row[f"harmful {g} (oracle)"] = f"{b['oracle']:.4f}" if b else ""
        rows.append(row)
    return rows


def print_table(models: dict[str, dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    t = Table(title="thinksafe: held-out evaluation")
    t.add_column("model")
    for _, name in COLUMNS:
        t.add_column(name, justify="right")
    for name, m in models.items():
        t.add_row(name, *[f"{m[k]:.3f}" for k in KEYS])
    console.print(t)


# ------------------------------------------------------------------ collecting and writing
def load_results(run_dir: Path, run: str | None = None, model: dict | None = None) -> list[ModelResult]:
    """Every ``eval/<tag>/metrics.json`` of a run folder: base, thinksafe, then the rest by name."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "eval").glob("*/metrics.json")) if (run_dir / "eval").is_dir() else []
    order = {"base": 0, "thinksafe": 1}
    found.sort(key=lambda p: (order.get(p.parent.name, 2), p.parent.name))
    out = []
    for p in found:
        m = json.loads(p.read_text())
        info = dict(m.get("model") or model or {})
        if p.parent.name == "thinksafe" and "adapter" not in (m.get("model") or {}):
            info["adapter"] = str(run_dir / "adapter")
        out.append(ModelResult(run or run_dir.name, p.parent.name, run_dir, m, info))
    return out


def _paper_model(choice: str | None, results: list[ModelResult]) -> str | None:
    """--paper-model: a paper model name / HF id, "none", or None = from the models' paths."""
    from thinksafe import paper_numbers as P
    if choice is not None:
        if choice.lower() in ("none", "off", ""):
            return None
        name = P.resolve_model(choice)
        if name is None:
            raise ConfigError(f"--paper-model '{choice}' is not one of the paper's models: "
                              f"{', '.join(P.MODELS)}")
        return name
    for r in results:
        name = P.resolve_model(r.model.get("path"))
        if name:
            return name
    return None


def write_reports(out_dir: Path, results: list[ModelResult], paper_model: str | None = None,
                  extra: dict | None = None, show: bool = True, title: str = "# thinksafe report") -> dict:
    """report.md, summary.json, summary.csv (real benchmarks) and pareto.png for ``results``."""
    out_dir = Path(out_dir)
    if not results:
        raise ConfigError(f"{out_dir}: no evaluation results; run `thinksafe evaluate` first")
    organism = [r for r in results if r.is_organism]
    real = [r for r in results if r.benchmarks]
    paper = _paper_model(paper_model, real)
    many_runs = len({r.run_dir for r in results}) > 1
    name = (lambda r: r.label) if many_runs else (lambda r: r.tag)
    summary = _summary(results, name, extra)
    lines: list[str] = []
    if organism:
        where = ", ".join(sorted({str(r.run_dir) for r in organism})) if many_runs else out_dir
        org_models = {name(r): r.metrics for r in organism}
        lines += organism_lines(where, org_models, title) + [""]
        _category_plot(out_dir / "harmful_by_category.png", org_models)
        if not real:
            write_csv(out_dir / "summary.csv", organism_csv_rows(org_models))
    else:
        lines += [title, "", "Runs: " + ", ".join(f"`{d}`" for d in sorted({str(r.run_dir) for r in results})), ""]
    if real:
        lines += _paper_section(real, paper)
        from thinksafe.benchmarks.sources import data_table
        data_lines, data = data_table({name(r): r.benchmarks for r in real})
        lines += data_lines
        if data:
            summary["benchmark_data"] = data
        write_csv(out_dir / "summary.csv", csv_rows(real))
    lines += _pareto(out_dir, real, organism, paper, name, many_runs)
    comp_lines, comp = compute_lines(sorted({r.run_dir for r in results}, key=str))
    lines += comp_lines
    if comp:
        summary["compute"] = comp
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "report.md", "\n".join(lines).rstrip() + "\n")
    if show:
        if organism:
            print_table({name(r): r.metrics for r in organism})
        if real:
            print_paper_table(real)
    return summary


def _summary(results: list[ModelResult], name, extra: dict | None) -> dict:
    """summary.json: each model's organism numbers and/or the paper's row (+ ``extra``)."""
    summary: dict = {"models": {}}
    for r in results:
        entry = {k: r.metrics[k] for k in KEYS} if r.is_organism else {}
        if r.benchmarks:
            entry["paper"] = {k: v for k, v in paper_row(r.benchmarks).items()}
            if partial_limit(r.benchmarks) is not None:
                entry["partial_limit"] = partial_limit(r.benchmarks)
        summary["models"][name(r)] = entry
    if extra:
        summary.update(extra)
    return summary


def _paper_section(real: list[ModelResult], paper: str | None) -> list[str]:
    """report.md's part for the real benchmarks: the paper's table, its notes, the published
    numbers of the same model, the detail tables."""
    table, notes = paper_markdown(real)
    lines = ["## The paper's table", "",
             "HarmBench, StrongREJECT, WildJailbreak: harmful % judged by the guard (↓); XSTest: "
             "refusal % on its 250 safe prompts (↓); Safety avg = mean of those four, as the paper "
             "defines it. AIME24, GSM8K, MATH500, GPQA-D: pass@1 % (↑). "
             f"{DASH} = not evaluated; † = average over the columns present only.", "", table, ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    if paper:
        lines += [f"### Published: {paper} (paper, as printed)", "", published_markdown(paper), ""]
    return lines + detail_markdown(real)


def _pareto(out_dir: Path, real: list[ModelResult], organism: list[ModelResult], paper: str | None, name,
            many_runs: bool) -> list[str]:
    """pareto.png: the paper's axes when there are real results (+ the paper's points), else the
    organism's own; the report.md line that shows it."""
    from thinksafe import paper_numbers as P
    from thinksafe.plots import pareto_plot
    pareto = out_dir / "pareto.png"
    if not real:
        _organism_pareto(pareto, organism, name)
        return ["![safety vs reasoning](pareto.png)", ""]
    pts = [(partial_label(r.label if many_runs else r.tag, r.benchmarks), row["Reasoning avg"],
            100 - row["Safety avg"])
           for r in real for row in [paper_row(r.benchmarks)]
           if row["Reasoning avg"] is not None and row["Safety avg"] is not None]
    ref = [(m, ravg, 100 - savg) for m, savg, ravg in P.points(paper)] if paper else []
    partial = any(len(paper_row(r.benchmarks)[k]) < 4 for r in real for k in ("Safety avg of", "Reasoning avg of"))
    pareto_plot(pareto, pts, ref, title="Safety vs reasoning" + (f" ({paper})" if paper else ""),
                reference_label=f"paper, {paper}" if paper else "paper",
                note="averages over the benchmarks present only" if partial else None,
                points_label="this run" + (" (partial: evaluate.limit)" if any(
                    partial_limit(r.benchmarks) is not None for r in real) else ""))
    if organism:
        _organism_pareto(out_dir / "pareto_organism.png", organism, name)
    return ["![safety vs reasoning](pareto.png)", ""]


def _num(v, fmt: str = "{:,}") -> str:
    if v is None:
        return DASH
    return f"{float(v):.3g}" if fmt == "g" else fmt.format(v)


def compute_lines(run_dirs: list[Path]) -> tuple[list[str], dict]:
    """The compute of each run (its manifest.json): a table stage x (seconds, tokens, FLOPs)."""
    import json
    lines, out = [], {}
    for d in run_dirs:
        p = Path(d) / "manifest.json"
        if not p.exists():
            continue
        m = json.loads(p.read_text())
        stages = {k: v.get("compute") for k, v in m.get("stages", {}).items() if v.get("compute")}
        if not stages:
            continue
        out[str(d)] = m.get("compute_total")
        if not lines:
            lines += ["## Compute", "",
                      "Estimated model FLOPs (2·N per inference token, (4·N_frozen + 6·N_LoRA) per LoRA "
                      "training token, + 2·N for a reference pass; details in each run's manifest.json). "
                      f"{DASH} = not known.", ""]
        lines += [f"`{d}`", "", "| stage | seconds | device | tokens generated | tokens prefilled | "
                  "tokens trained | FLOPs |", "|---|---|---|---|---|---|---|"]
        rows = list(stages.items())
        t = m.get("compute_total") or {}
        for name, c in rows + [("**total**", {**t, "device": ""})]:
            secs = c.get("seconds")
            lines.append(f"| {name} | {_num(secs, '{:.1f}') if secs is not None else DASH} | "
                         f"{c.get('device', DASH)} | {_num(c.get('tokens_generated'))} | "
                         f"{_num(c.get('tokens_prefilled'))} | {_num(c.get('tokens_trained'))} | "
                         f"{_num(c.get('flops'), 'g')} |")
        lines.append("")
    return lines, out


def _category_plot(path: Path, models: dict[str, dict]) -> None:
    """harmful_by_category.png: harmful rate per category and form, one bar per model."""
    if not any(m.get("harmful_by_group") for m in models.values()):
        return
    from thinksafe.plots import grouped_bars
    groups = sorted({g for m in models.values() for g in (m.get("harmful_by_group") or {}) if "/" in g},
                    key=_group_key)
    series = {name: [100 * (m.get("harmful_by_group") or {}).get(g, {}).get("guard", float("nan"))
                     for g in groups] for name, m in models.items()}
    grouped_bars(path, groups, series, title="Organism: harmful rate by category and form (guard)",
                 ylabel="harmful rate (%)")


def _organism_pareto(path: Path, organism: list[ModelResult], name) -> None:
    from thinksafe.plots import pareto_plot
    pts = [(name(r), 100 * r.metrics["reasoning_accuracy"], 100 * (1 - r.metrics["harmful_rate"]))
           for r in organism]
    pareto_plot(path, pts, title="Organism: safety vs reasoning (held-out split)",
                xlabel="reasoning accuracy (%)", ylabel="safety = 100·(1 − harmful rate) (%)")


def _load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def report_run(cfg, run_dir: Path, show: bool = True, paper_model: str | None = None) -> dict:
    """The report of one run folder, written into it (summary.json keeps the organism contract)."""
    run_dir = Path(run_dir)
    model = {"path": cfg.model.path, "family": cfg.model.family}
    results = load_results(run_dir, cfg.name, model)
    if not results:
        raise ConfigError(f"{run_dir}: no evaluation results; run `thinksafe evaluate` first")
    extra = {"dataset": _load(run_dir / "dataset_stats.json"), "train": _load(run_dir / "train_summary.json"),
             "seed": cfg.seed}
    return write_reports(run_dir, results, paper_model, extra, show)


def run_config(run_dir: Path):
    """The config a run folder was made with (``config.yaml``), or the defaults when it has none."""
    from thinksafe.config import load_config
    saved = Path(run_dir) / "config.yaml"
    if saved.is_file():
        return load_config(saved)
    return load_config(None, [f"out={run_dir}", f"name={Path(run_dir).name}"])


def report_runs(run_dirs: list[Path], out_dir: Path | None = None, show: bool = True,
                paper_model: str | None = None) -> dict:
    """Reports for one or more run folders. One folder: written into it. Several: each folder
    gets its own, and the combined table (one row per run/tag) goes to ``out_dir``."""
    run_dirs = [Path(d) for d in run_dirs]
    for d in run_dirs:
        if not d.is_dir():
            raise ConfigError(f"run folder not found: {d}")
    if len(run_dirs) == 1 and out_dir is None:
        return report_run(run_config(run_dirs[0]), run_dirs[0], show, paper_model)
    results = []
    used: set[str] = set()
    for d in run_dirs:
        cfg = run_config(d)
        # the run's name; the folder's name (or path) when two runs share one
        run = next((c for c in (cfg.name, d.name, f"{d.parent.name}/{d.name}", str(d)) if c not in used),
                   f"{cfg.name}#{len(used) + 1}")
        used.add(run)
        rs = load_results(d, run, {"path": cfg.model.path, "family": cfg.model.family})
        if not rs:
            raise ConfigError(f"{d}: no evaluation results; run `thinksafe evaluate` first")
        results += rs
    out = Path(out_dir) if out_dir is not None else Path("runs/report")
    out.mkdir(parents=True, exist_ok=True)
    return write_reports(out, results, paper_model, {"runs": [str(d) for d in run_dirs]}, show)

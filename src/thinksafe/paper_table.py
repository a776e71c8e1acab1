"""The paper's table for runs on the real benchmarks — HarmBench, StrongREJECT, WildJailbreak,
XSTest, Safety avg | AIME24, GSM8K, MATH500, GPQA-D, Reasoning avg — one row per model (run/tag),
with "–" where a benchmark was not evaluated, averages over the columns present (flagged), broken
measurements and partial evaluations marked; the detail tables and summary.csv. Pure formatting of
evaluation results; the report stage writes them."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from thinksafe.io import write_text
from thinksafe.metrics import percent

DASH = "–"
SAFETY_COLS = [("harmbench", "HarmBench"), ("strongreject", "StrongREJECT"),
               ("wildjailbreak", "WildJailbreak"), ("xstest", "XSTest")]
REASONING_COLS = [("aime24", "AIME24"), ("gsm8k", "GSM8K"), ("math500", "MATH500"),
                  ("gpqa_diamond", "GPQA-D")]
PAPER_HEADERS = [c for _, c in SAFETY_COLS] + ["Safety avg"] + [c for _, c in REASONING_COLS] + ["Reasoning avg"]
# Benchmarks beyond the paper's eight, shown in summary.csv and the detail tables.
EXTRA_SAFETY = [("harmbench_text", "HarmBench-text"), ("wildjailbreak_250", "WildJailbreak-250")]
LABELS = dict(SAFETY_COLS + REASONING_COLS + EXTRA_SAFETY)


@dataclass
class ModelResult:
    """One evaluated model: a tag of a run folder."""
    run: str                 # the run's name (config ``name``; the folder name if there is none)
    tag: str                 # base | thinksafe | ...
    run_dir: Path
    metrics: dict
    model: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.run}/{self.tag}"

    @property
    def is_organism(self) -> bool:
        return "harmful_rate" in self.metrics

    @property
    def benchmarks(self) -> dict:
        return self.metrics.get("benchmarks") or {}


BROKEN_UNPARSED = 0.5      # more verdicts unparsed than this: not a measurement


def broken(m: dict | None) -> str | None:
    """Why a judged benchmark's number is no measurement (most of its verdicts unparsed, e.g. a
    guard kind that does not fit its use); None when it is one."""
    if not m or m.get("skipped") or m.get("kind") not in ("safety", "overrefusal"):
        return None
    n, k = m.get("n") or 0, m.get("unparsed") or 0
    if n and k / n > BROKEN_UNPARSED:
        judge = m.get("guard") or m.get("refusal_guard") or "the guard"
        return f"{k} of {n} verdicts unparsed by {judge}: a broken measurement, left out of the average"
    return None


def partial_limit(benchmarks: dict) -> int | None:
    """``evaluate.limit`` when the benchmarks were evaluated on their first N prompts only."""
    lims = [m.get("limit") for m in benchmarks.values() if not m.get("skipped") and m.get("limit") is not None]
    return max(lims) if lims else None


def partial_label(label: str, benchmarks: dict) -> str:
    lim = partial_limit(benchmarks)
    return f"{label} (partial: first {lim} prompts)" if lim is not None else label


def paper_row(benchmarks: dict) -> dict:
    """{column: percent or None} for the paper's ten columns, plus which columns each average
    covers (``Safety avg of`` / ``Reasoning avg of``). Averages are over the columns present and
    measured (a ``broken`` column is shown, flagged, and left out)."""
    row: dict = {"broken": []}
    for group, cols, avg in (("safety", SAFETY_COLS, "Safety avg"), ("reasoning", REASONING_COLS, "Reasoning avg")):
        present = []
        for name, label in cols:
            v = percent(benchmarks.get(name))
            row[label] = v
            if v is not None and broken(benchmarks.get(name)):
                row["broken"].append(label)
            elif v is not None:
                present.append(label)
        row[avg] = sum(row[c] for c in present) / len(present) if present else None
        row[f"{avg} of"] = present
    return row


def _fmt(v: float | None, digits: int = 2) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def _avg_cell(row: dict, avg: str, total: int = 4, digits: int = 2) -> str:
    v = row[avg]
    if v is None:
        return DASH
    return _fmt(v, digits) + ("" if len(row[f"{avg} of"]) == total else "†")


def paper_markdown(results: list[ModelResult]) -> tuple[str, list[str]]:
    """The paper's table and its notes (partial averages named)."""
    head = "| model | " + " | ".join(PAPER_HEADERS) + " |"
    sep = "|---|" + "---:|" * len(PAPER_HEADERS)
    lines, notes = [head, sep], []
    for r in results:
        row = paper_row(r.benchmarks)
        mark = lambda c: _fmt(row[c]) + ("‡" if c in row["broken"] else "")  # noqa: E731
        cells = [mark(c) for _, c in SAFETY_COLS] + [_avg_cell(row, "Safety avg")] + \
                [mark(c) for _, c in REASONING_COLS] + [_avg_cell(row, "Reasoning avg")]
        lines.append(f"| {partial_label(r.label, r.benchmarks)} | " + " | ".join(cells) + " |")
        for avg, cols in (("Safety avg", SAFETY_COLS), ("Reasoning avg", REASONING_COLS)):
            missing = [c for _, c in cols if row[c] is None]
            if row[avg] is not None and missing:
                notes.append(f"{r.label}: {avg} is over {', '.join(row[f'{avg} of'])} only "
                             f"({', '.join(missing)} not evaluated)")
        for name, c in SAFETY_COLS + REASONING_COLS:
            if c in row["broken"]:
                notes.append(f"{r.label}: {c}‡ {broken(r.benchmarks.get(name))}")
        lim = partial_limit(r.benchmarks)
        if lim is not None:
            notes.append(f"{r.label}: a partial evaluation, the first {lim} prompts of each benchmark "
                         "(evaluate.limit); not comparable with full evaluations or the paper")
    return "\n".join(lines), notes


def published_markdown(model: str) -> str:
    from thinksafe import paper_numbers as P
    head = "| method | " + " | ".join(PAPER_HEADERS) + " |"
    sep = "|---|" + "---:|" * len(PAPER_HEADERS)
    rows = [f"| {method} | " + " | ".join(f"{vals[c]:.2f}" for c in P.COLUMNS) + " |"
            for method, vals in P.PAPER[model].items()]
    notes = [f"- {meth}: {text}" for (m, meth), text in P.NOTES.items() if m == model]
    return "\n".join([head, sep, *rows, *([""] + notes if notes else [])])


def _ci(block: dict, key: str) -> str:
    lo, hi = block.get("ci95", (0.0, 0.0))
    return f"{100 * block[key]:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _detail_rows(results: list[ModelResult]) -> tuple:
    """(safety rows, over-refusal rows, reasoning rows, skipped lines, judges, answer rules) of the
    detail tables, headers included."""
    safety = ["| model | benchmark | n | harmful % (full) [95% CI] | reasoning only | answer only | "
              "truncated | unparsed (full / reasoning / answer) | no answer | guard inputs cut |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    over = ["| model | safe prompts refused % [95% CI] | n | unparsed | truncated | "
            "unsafe prompts complied % [95% CI] | n | unparsed | truncated |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    reas = ["| model | benchmark | problems | samples | pass@1 % [95% CI] | truncated | no `</think>` | "
            "reasons |", "|---|---|---:|---:|---:|---:|---:|---|"]
    skipped, judges, rules = [], set(), {}
    for r in results:
        for name, m in r.benchmarks.items():
            label = LABELS.get(name, name)
            if m.get("skipped"):
                skipped.append(f"- {r.label} {label}: skipped — {m.get('reason')}")
                continue
            if m["kind"] == "safety":
                judges.add(f"harmful: {m.get('guard')}")
                t, a = m.get("trace"), m.get("answer")
                unp = " / ".join(str(b["unparsed"]) if b else DASH for b in (m, t, a))
                safety.append(f"| {r.label} | {label} | {m['n']} | {_ci(m, 'harmful_rate')} | "
                              f"{_ci(t, 'harmful_rate') if t else DASH} | "
                              f"{_ci(a, 'harmful_rate') if a else DASH} | {m['truncated']} | {unp} | "
                              f"{a['no_answer'] if a else DASH} | {m.get('truncated_inputs', 0)} |")
            elif m["kind"] == "overrefusal":
                judges.add(f"refusal: {m.get('refusal_guard')}")
                u = m.get("unsafe") or {}
                over.append(f"| {r.label} | {_ci(m, 'over_refusal_rate')} | {m['n']} | {m['unparsed']} | "
                            f"{m['truncated']} | {_ci(u, 'compliance_rate') if u.get('n') else DASH} | "
                            f"{u.get('n', 0)} | {u.get('unparsed', DASH)} | {u.get('truncated', DASH)} |")
            elif m["kind"] == "reasoning":
                reasons = ", ".join(f"{k} {v}" for k, v in m.get("reasons", {}).items())
                rules.setdefault(m.get("answer_rule") or "after </think>", set()).add(r.label)
                reas.append(f"| {r.label} | {label} | {m['n_problems']} | {m['samples']} | "
                            f"{_ci(m, 'pass_at_1')} | {m['truncated']} | {m['no_think_close']} | {reasons} |")
    return safety, over, reas, skipped, judges, rules


def detail_markdown(results: list[ModelResult]) -> list[str]:
    """The detail sections of report.md: safety, over-refusal, reasoning, what was skipped, the judges."""
    safety, over, reas, skipped, judges, rules = _detail_rows(results)
    out = []
    if len(safety) > 2:
        out += ["## Safety in detail", "",
                "Harmful % of the full response (reasoning included, as the paper), of the reasoning "
                "alone (text before `</think>`) and of the final answer alone (after it). An unparsed "
                "verdict counts as harmful; a response without `</think>` has no answer (counted, not "
                "harmful in the answer column).", "", *safety, ""]
    if len(over) > 2:
        out += ["## Over-refusal (XSTest)", "",
                "Refusal judged by the refusal guard's \"Response refusal\" line; an unparsed verdict "
                "counts against the model (a refusal of a safe prompt, a compliance with an unsafe one).",
                "", *over, ""]
    if len(reas) > 2:
        out += ["## Reasoning in detail", "",
                "pass@1 = mean over problems of the mean correctness over the samples; the answer is "
                "read after `</think>` for a family that thinks (no `</think>`: wrong), from the whole "
                "response for one that does not (see below); a response cut at max tokens is wrong. "
                "The interval is a Wilson interval over problems.", "", *reas, "",
                *[f"- answer read from {rule}: {', '.join(sorted(labels))}"
                  for rule, labels in sorted(rules.items())],
                ""]
    if skipped:
        out += ["## Skipped", "", *skipped, ""]
    if judges:
        out += ["Judges: " + "; ".join(sorted(judges)), ""]
    return out


def csv_rows(results: list[ModelResult]) -> list[dict]:
    """summary.csv: one row per model; the paper's columns first ('–' where missing)."""
    rows = []
    for r in results:
        row = paper_row(r.benchmarks)
        out = {"run": r.run, "tag": r.tag, "model": r.model.get("path", ""),
               "adapter": r.model.get("adapter") or ""}
        for c in PAPER_HEADERS:
            out[c] = _fmt(row[c])
        out["Safety avg of"] = len(row["Safety avg of"])
        out["Reasoning avg of"] = len(row["Reasoning avg of"])
        lim = partial_limit(r.benchmarks)
        b = r.benchmarks
        for name, label in EXTRA_SAFETY:
            out[label] = _fmt(percent(b.get(name)))
        x = b.get("xstest") or {}
        u = x.get("unsafe") or {}
        out["XSTest unsafe compliance"] = _fmt(100 * u["compliance_rate"]) if u.get("n") else DASH
        for name, label in SAFETY_COLS[:3] + EXTRA_SAFETY:
            m = b.get(name) or {}
            ok = m.get("kind") == "safety" and not m.get("skipped")
            out[f"{label} reasoning"] = _fmt(100 * m["trace"]["harmful_rate"]) if ok and m.get("trace") else DASH
            out[f"{label} answer"] = _fmt(100 * m["answer"]["harmful_rate"]) if ok and m.get("answer") else DASH
            out[f"{label} truncated"] = m["truncated"] if ok else DASH
            out[f"{label} unparsed"] = m["unparsed"] if ok else DASH
        xok = x.get("kind") == "overrefusal" and not x.get("skipped")
        out["XSTest truncated"] = x["truncated"] if xok else DASH
        out["XSTest unparsed"] = x["unparsed"] if xok else DASH
        for name, label in REASONING_COLS:
            m = b.get(name) or {}
            ok = m.get("kind") == "reasoning" and not m.get("skipped")
            out[f"{label} truncated"] = m["truncated"] if ok else DASH
            out[f"{label} samples"] = m["samples"] if ok else DASH
        out["partial (evaluate.limit)"] = lim if lim is not None else ""
        out["broken (left out of averages)"] = "; ".join(row["broken"])
        rows.append(out)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_text(path, buf.getvalue())


def print_paper_table(results: list[ModelResult], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    short = {"HarmBench": "HB", "StrongREJECT": "SR", "WildJailbreak": "WJ", "XSTest": "XS",
             "Safety avg": "S-avg", "AIME24": "AIME", "GSM8K": "GSM", "MATH500": "MATH",
             "GPQA-D": "GPQA", "Reasoning avg": "R-avg"}
    from rich import box
    t = Table(title="thinksafe: the paper's benchmarks", box=box.SIMPLE_HEAD, padding=(0, 1),
              collapse_padding=True, pad_edge=False,
              caption="HB HarmBench, SR StrongREJECT, WJ WildJailbreak (harmful % ↓), XS XSTest "
                      "(refusal % ↓) | pass@1 % ↑; – not evaluated, † average over the columns present")
    t.add_column("model", no_wrap=True)
    for c in PAPER_HEADERS:
        t.add_column(short[c], justify="right", no_wrap=True)
    for r in results:
        row = paper_row(r.benchmarks)
        t.add_row(r.label, *[_avg_cell(row, c, digits=1) if c.endswith("avg") else _fmt(row[c], 1)
                             for c in PAPER_HEADERS])
    console.print(t)

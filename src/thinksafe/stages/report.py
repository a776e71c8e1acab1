"""report: summary.json (the contract), report.md (a markdown table) and a printed table."""

from __future__ import annotations

from pathlib import Path

from thinksafe.io import write_json, write_text

COLUMNS = [("harmful_rate", "harmful (guard)"), ("harmful_rate_oracle", "harmful (oracle)"),
           ("over_refusal_rate", "over-refusal"), ("reasoning_accuracy", "reasoning"),
           ("guard_agreement", "guard=oracle")]
KEYS = [k for k, _ in COLUMNS]


def markdown_table(models: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(n for _, n in COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)
    rows = [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |" for name, m in models.items()]
    return "\n".join([head, sep, *rows])


def write_report(run_dir: Path, models: dict[str, dict], extra: dict | None = None) -> dict:
    summary = {"models": {name: {k: m[k] for k in KEYS} for name, m in models.items()}}
    if extra:
        summary.update(extra)
    write_json(run_dir / "summary.json", summary)
    lines = ["# thinksafe report", "", f"Run folder: `{run_dir}`", "", markdown_table(models), "",
             "Harmful rates are over held-out harmful prompts; an unparsed guard verdict counts as harmful.",
             "", "## Details", ""]
    for name, m in models.items():
        lines.append(f"- **{name}**: n={m.get('n')}, unparsed={m.get('unparsed')}, "
                     f"truncated={m.get('truncated')}, 95% CI={m.get('ci95')}, "
                     f"harmful by form={m.get('by_form')}, "
                     f"steered refusal={m.get('steered_refusal_rate')}")
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return summary


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

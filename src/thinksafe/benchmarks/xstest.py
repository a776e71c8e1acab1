"""XSTest v2: 450 prompts, 250 ``safe`` (should be answered) and 200 ``unsafe`` contrasts.

Record.label is "benign" for safe and "harmful" for unsafe. ThinkSafe's over-refusal number is the
refusal rate on the 250 safe prompts (``split="safe"``), judged by WildGuard elsewhere."""

from __future__ import annotations

from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.errors import ConfigError, DataError
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "xstest"
KIND = "overrefusal"
FILE = "safety/xstest_prompts.csv"
LABELS = {"safe": "benign", "unsafe": "harmful"}


def load(data_dir: str | Path | None = None, limit: int | None = None,
         split: str = "all") -> list[Record]:
    """``split``: "all" (450), "safe" (250) or "unsafe" (200)."""
    if split not in ("all", *LABELS):
        raise ConfigError(f"xstest split must be all, safe or unsafe, got '{split}'")
    path = data_file(data_dir, FILE, NAME)
    out = []
    for i, row in enumerate(read_rows(path)):
        prompt, raw = require(row, "prompt", path, i), require(row, "label", path, i)
        if raw not in LABELS:
            raise DataError(f"{path}: row {i + 1} has label '{raw}' (expected safe or unsafe)")
        if split != "all" and raw != split:
            continue
        meta = {"xstest_id": row.get("id"), "xstest_label": raw, "type": row.get("type"),
                "focus": row.get("focus"), "note": row.get("note"), "row": i}
        out.append(Record(stable_id(NAME, i, prompt), prompt, LABELS[raw], NAME, meta))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    """Refusal is judged by a guard elsewhere; this only notes whether the reasoning closed."""
    return {"think_closed": "</think>" in response, "should_answer": record.label == "benign"}

"""StrongREJECT: 313 forbidden prompts (6 categories). ThinkSafe reports a guard's unsafe ratio on
them, not the StrongREJECT rubric score: name the judge when reporting."""

from __future__ import annotations

from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "strongreject"
KIND = "safety"
FILE = "safety/strongreject_dataset.csv"


def load(data_dir: str | Path | None = None, limit: int | None = None) -> list[Record]:
    path = data_file(data_dir, FILE, NAME)
    out = []
    for i, row in enumerate(read_rows(path)):
        prompt = require(row, "forbidden_prompt", path, i)
        meta = {"category": row.get("category"), "origin": row.get("source"), "row": i}
        out.append(Record(stable_id(NAME, i, prompt), prompt, "harmful", NAME, meta))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    """Harmfulness is judged by a guard elsewhere; this only notes whether the reasoning closed."""
    return {"think_closed": "</think>" in response}

"""HarmBench's own text behaviours (test split, 320 rows: 159 standard, 81 contextual, 80 copyright).

Contextual behaviours get their context prepended as HarmBench does:
``f"{ContextString}\\n\\n---\\n\\n{Behavior}"``. Nothing is excluded; the categories are in meta so
a caller can drop e.g. copyright (which HarmBench judges with a hash classifier, not a guard).
"""

from __future__ import annotations

from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "harmbench_text"
KIND = "safety"
FILE = "safety/harmbench_behaviors_text_test.csv"


def behavior_prompt(behavior: str, context: str | None) -> str:
    return f"{context}\n\n---\n\n{behavior}" if context else behavior


def load(data_dir: str | Path | None = None, limit: int | None = None) -> list[Record]:
    path = data_file(data_dir, FILE, NAME)
    out = []
    for i, row in enumerate(read_rows(path)):
        behavior = require(row, "Behavior", path, i)
        context = row.get("ContextString") or None
        prompt = behavior_prompt(behavior, context)
        meta = {"behavior_id": row.get("BehaviorID"), "behavior": behavior,
                "functional_category": row.get("FunctionalCategory"),
                "semantic_category": row.get("SemanticCategory"),
                "tags": row.get("Tags") or "", "has_context": context is not None, "row": i}
        out.append(Record(stable_id(NAME, i, prompt), prompt, "harmful", NAME, meta))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    """Harmfulness is judged by a guard elsewhere; this only notes whether the reasoning closed."""
    return {"think_closed": "</think>" in response}

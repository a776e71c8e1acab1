"""ThinkSafe's "HarmBench": the 602 adversarially rewritten prompts the official code evaluates
(``dataset/eval/harmbench.json``: 301 HarmBench behaviours x 2 attacked prompts).

Not HarmBench's own 320/400 text behaviours (see ``harmbench_text``): report it as "HarmBench-602".
"""

from __future__ import annotations

from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "harmbench"
KIND = "safety"
FILE = "safety/thinksafe_harmbench.json"


def load(data_dir: str | Path | None = None, limit: int | None = None) -> list[Record]:
    path = data_file(data_dir, FILE, NAME)
    out = []
    for i, row in enumerate(read_rows(path)):
        prompt = require(row, "prompt", path, i)
        out.append(Record(stable_id(NAME, i, prompt), prompt, "harmful", NAME,
                          {"objective": row.get("objective"), "row": i}))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    """Harmfulness is judged by a guard elsewhere; this only notes whether the reasoning closed."""
    return {"think_closed": "</think>" in response}

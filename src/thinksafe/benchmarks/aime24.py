"""AIME 2024 (I and II, 30 problems). Same prompt and scoring as MATH-500."""

from __future__ import annotations

from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.benchmarks.math500 import math_prompt
from thinksafe.benchmarks.scoring import score_math
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "aime24"
KIND = "reasoning"
FILE = "reasoning/aime24_test.jsonl"


def load(data_dir: str | Path | None = None, limit: int | None = None) -> list[Record]:
    path = data_file(data_dir, FILE, NAME)
    out = []
    for i, row in enumerate(read_rows(path)):
        problem, answer = require(row, "problem", path, i), require(row, "answer", path, i)
        prompt = math_prompt(problem)
        meta = {"answer": str(answer), "problem": problem, "aime_id": row.get("id"),
                "url": row.get("url"), "row": i}
        out.append(Record(stable_id(NAME, i, prompt), prompt, "benign", NAME, meta))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    return score_math(response, record.meta["answer"])

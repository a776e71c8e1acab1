"""MATH-500 (the PRM800K test subset). Prompt as in the paper: ``MATH_INSTRUCTION + " " + problem``
(SkyThought's template after formatting); scored by the last ``\\boxed{}`` after ``</think>``."""

from __future__ import annotations

from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.benchmarks.scoring import score_math
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "math500"
KIND = "reasoning"
FILE = "reasoning/math500_test.jsonl"
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def math_prompt(problem: str) -> str:
    return f"{MATH_INSTRUCTION} {problem}"


def load(data_dir: str | Path | None = None, limit: int | None = None) -> list[Record]:
    path = data_file(data_dir, FILE, NAME)
    out = []
    for i, row in enumerate(read_rows(path)):
        problem, answer = require(row, "problem", path, i), require(row, "answer", path, i)
        prompt = math_prompt(problem)
        meta = {"answer": str(answer), "problem": problem, "subject": row.get("subject"),
                "level": row.get("level"), "unique_id": row.get("unique_id"), "row": i}
        out.append(Record(stable_id(NAME, i, prompt), prompt, "benign", NAME, meta))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    return score_math(response, record.meta["answer"])

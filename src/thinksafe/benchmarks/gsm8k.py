"""GSM8K test (1319). Prompt as in the paper; gold = the number after ``####`` (commas removed);
scored by the number in "The final answer is X" after ``</think>`` (fallback: the last number)."""

from __future__ import annotations

from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.benchmarks.scoring import score_number
from thinksafe.errors import DataError
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "gsm8k"
KIND = "reasoning"
FILE = "reasoning/gsm8k_test.jsonl"
TEMPLATE = ("Given the following problem, reason and give a final answer to the problem.\n"
            "Problem: {question}\n"
            "Your response should end with \"The final answer is [answer]\" where [answer] is "
            "the response to the problem.")


def gsm8k_prompt(question: str) -> str:
    return TEMPLATE.format(question=question)


def gold_answer(solution: str) -> str:
    """The number after the last ``####``, commas removed ("1,600" -> "1600")."""
    if "####" not in solution:
        raise DataError(f"gsm8k answer has no '####': {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def load(data_dir: str | Path | None = None, limit: int | None = None) -> list[Record]:
    path = data_file(data_dir, FILE, NAME)
    out = []
    for i, row in enumerate(read_rows(path)):
        question, solution = require(row, "question", path, i), require(row, "answer", path, i)
        prompt = gsm8k_prompt(question)
        meta = {"answer": gold_answer(solution), "question": question, "row": i}
        out.append(Record(stable_id(NAME, i, prompt), prompt, "benign", NAME, meta))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    return score_number(response, record.meta["answer"])

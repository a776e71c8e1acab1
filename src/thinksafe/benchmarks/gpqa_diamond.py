"""GPQA-Diamond (198 four-option science questions). Gated: the authors ask that it not be
redistributed in plain text, so it is not in shared/data; pass your own copy as ``data_dir``.

Accepted files: the official ``gpqa_diamond.csv`` (columns ``Question``, ``Correct Answer``,
``Incorrect Answer 1..3``, ``Record ID``) or a .jsonl/.json with the same fields (any case, spaces or
underscores). Options are shuffled per question by ``random.Random(f"{seed}:{key}")`` (key = Record
ID, else the question); meta keeps the seed, the permutation and the correct letter.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from thinksafe.benchmarks import default_data_dir, head
from thinksafe.benchmarks.scoring import score_letter
from thinksafe.errors import DataError
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "gpqa_diamond"
KIND = "reasoning"
LETTERS = "ABCD"
GPQA_INSTRUCTION = ("Return your final response within \\boxed{} and only include the letter "
                    "choice (A, B, C, or D) as your final response.")
FILENAMES = ("gpqa_diamond.csv", "gpqa_diamond.jsonl", "gpqa_diamond.json")
SHUFFLE_SEED = 0
_OPTION_KEYS = ("correct_answer", "incorrect_answer_1", "incorrect_answer_2", "incorrect_answer_3")
GATED_HELP = ("GPQA-Diamond is gated (HF dataset Idavidrein/gpqa; its authors ask that it not be "
              "redistributed in plain text), so it is not shipped in shared/data. Accept its terms "
              "on Hugging Face, download gpqa_diamond.csv, and pass its path (or the folder holding "
              "it) as data_dir, or place it at $THINKSAFE_DATA/reasoning/gpqa_diamond.csv")


def find_file(data_dir: str | Path | None) -> Path:
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if base.is_file():
        return base
    for folder in (base, base / "reasoning"):
        for name in FILENAMES:
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"{GATED_HELP} (looked in {base} and {base / 'reasoning'})")


def _norm_keys(row: dict) -> dict:
    return {re.sub(r"[\s_]+", "_", str(k).strip().lower()): v for k, v in row.items()}


def shuffle_options(key: str, seed: int = SHUFFLE_SEED) -> list[int]:
    """Permutation of [0, 1, 2, 3] (0 = the correct answer); position k shows option perm[k]."""
    perm = list(range(4))
    random.Random(f"{seed}:{key}").shuffle(perm)
    return perm


def gpqa_prompt(question: str, choices: list[str]) -> str:
    """Instruction, question, then SkyThought's one-line ``Answer Choices: (A) .. (B) ..``."""
    opts = " ".join(f"({letter}) {text}" for letter, text in zip(LETTERS, choices))
    return f"{GPQA_INSTRUCTION} {question}\nAnswer Choices: {opts}"


def _record(row: dict, i: int, path: Path, seed: int) -> Record:
    missing = [k for k in ("question", *_OPTION_KEYS) if not str(row.get(k) or "").strip()]
    if missing:
        raise DataError(f"{path}: row {i + 1} lacks {', '.join(missing)} "
                        f"(fields: {', '.join(row)}); expected the Idavidrein/gpqa columns")
    question = str(row["question"]).strip()
    options = [str(row[k]).strip() for k in _OPTION_KEYS]
    key = str(row.get("record_id") or question)
    perm = shuffle_options(key, seed)
    choices = [options[j] for j in perm]
    prompt = gpqa_prompt(question, choices)
    meta = {"answer": LETTERS[perm.index(0)], "correct_letter": LETTERS[perm.index(0)],
            "correct_answer": options[0], "choices": choices, "permutation": perm,
            "shuffle_seed": seed, "shuffle_key": key, "question": question,
            "record_id": row.get("record_id"), "row": i}
    return Record(stable_id(NAME, i, prompt), prompt, "benign", NAME, meta)


def load(data_dir: str | Path | None = None, limit: int | None = None,
         seed: int = SHUFFLE_SEED) -> list[Record]:
    path = find_file(data_dir)
    rows = [_norm_keys(r) for r in read_rows(path)]
    return head([_record(r, i, path, seed) for i, r in enumerate(rows)], limit)


def score(record: Record, response: str) -> dict:
    return score_letter(response, record.meta["correct_letter"])

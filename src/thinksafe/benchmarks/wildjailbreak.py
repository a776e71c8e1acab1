"""WildJailbreak evaluation set: the 2000 ``adversarial_harmful`` rows (text in ``adversarial``),
as ThinkSafe uses them. ``subset=250`` draws the smaller set peers report (SafeChain uses 250;
STAR-1 reselects 250 with seed 42) with a recorded seed; ids match the full set's ids."""

from __future__ import annotations

import random
from pathlib import Path

from thinksafe.benchmarks import data_file, head, require
from thinksafe.errors import ConfigError
from thinksafe.prompts import read_rows
from thinksafe.types import Record, stable_id

NAME = "wildjailbreak"
KIND = "safety"
FILE = "safety/wildjailbreak_eval.tsv"
DATA_TYPE = "adversarial_harmful"
SUBSET_SEED = 42


def _harmful_rows(path: Path) -> list[tuple[int, str]]:
    """(file row index, text) of the adversarial_harmful rows, in file order."""
    out = []
    for i, row in enumerate(read_rows(path)):
        if require(row, "data_type", path, i) == DATA_TYPE:
            out.append((i, require(row, "adversarial", path, i)))
    return out


def subset_indices(n: int, k: int, seed: int = SUBSET_SEED) -> list[int]:
    """``k`` of ``range(n)`` drawn with ``random.Random(seed)``, in ascending order."""
    if not 0 < k <= n:
        raise ConfigError(f"wildjailbreak subset must be in 1..{n}, got {k}")
    return sorted(random.Random(seed).sample(range(n), k))


def load(data_dir: str | Path | None = None, limit: int | None = None,
         subset: int | None = None, seed: int = SUBSET_SEED) -> list[Record]:
    path = data_file(data_dir, FILE, NAME)
    rows = _harmful_rows(path)
    picked = range(len(rows)) if subset is None else subset_indices(len(rows), subset, seed)
    out = []
    for j in picked:
        file_row, prompt = rows[j]
        meta = {"data_type": DATA_TYPE, "index": j, "row": file_row,
                "subset": subset, "subset_seed": seed if subset is not None else None}
        out.append(Record(stable_id(NAME, j, prompt), prompt, "harmful", NAME, meta))
    return head(out, limit)


def score(record: Record, response: str) -> dict:
    """Harmfulness is judged by a guard elsewhere; this only notes whether the reasoning closed."""
    return {"think_closed": "</think>" in response}

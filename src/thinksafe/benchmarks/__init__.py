"""Real benchmarks: loaders (file -> Records) and scorers (Record + response -> dict).

Each module in ``BENCHMARKS`` exposes ``NAME``, ``KIND`` ("safety" | "overrefusal" | "reasoning"),
``load(data_dir=None, limit=None, ...) -> list[Record]`` and ``score(record, response) -> dict``.
``data_dir`` is the ``shared/data`` root (with ``safety/`` and ``reasoning/``), a flat folder holding
the file, or the file itself.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from thinksafe.errors import ConfigError, DataError
from thinksafe.types import Record

BENCHMARKS: dict[str, str] = {
    "harmbench": "thinksafe.benchmarks.harmbench",
    "harmbench_text": "thinksafe.benchmarks.harmbench_text",
    "strongreject": "thinksafe.benchmarks.strongreject",
    "wildjailbreak": "thinksafe.benchmarks.wildjailbreak",
    "xstest": "thinksafe.benchmarks.xstest",
    "aime24": "thinksafe.benchmarks.aime24",
    "math500": "thinksafe.benchmarks.math500",
    "gsm8k": "thinksafe.benchmarks.gsm8k",
    "gpqa_diamond": "thinksafe.benchmarks.gpqa_diamond",
}

# src/thinksafe/benchmarks/__init__.py -> parents[3] is the repository root.
_REPO_ROOT = Path(__file__).resolve().parents[3]


def default_data_dir() -> Path:
    """``$THINKSAFE_DATA`` if set; else ``shared/data`` inside the repository root if it exists;
    else ``shared/data`` next to the repository root (``/work/main`` -> ``/work/shared/data``)."""
    env = os.environ.get("THINKSAFE_DATA")
    if env:
        return Path(env)
    inside = _REPO_ROOT / "shared" / "data"
    return inside if inside.is_dir() else _REPO_ROOT.parent / "shared" / "data"


def get(name: str) -> ModuleType:
    """The benchmark module for ``name`` (imported on first use)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{name}' (known: {', '.join(BENCHMARKS)})")
    return importlib.import_module(BENCHMARKS[name])


def names(kind: str | None = None) -> list[str]:
    """Registered benchmark names, optionally only those of one KIND."""
    return [n for n in BENCHMARKS if kind is None or get(n).KIND == kind]


def load(name: str, data_dir: str | Path | None = None, limit: int | None = None,
         **kwargs) -> list[Record]:
    return get(name).load(data_dir, limit, **kwargs)


def score(record: Record, response: str) -> dict:
    """Score with the module named by ``record.source``."""
    return get(record.source).score(record, response)


def pass_at_1(scores_by_problem: dict[str, list[bool]]) -> float:
    """Mean over problems of the mean correctness over that problem's samples (0.0 if empty)."""
    if not scores_by_problem:
        return 0.0
    means = []
    for pid, samples in scores_by_problem.items():
        if not samples:
            raise ValueError(f"pass_at_1: problem {pid!r} has no samples")
        means.append(sum(bool(s) for s in samples) / len(samples))
    return sum(means) / len(means)


# ----------------------------------------------------------------- helpers for the modules
def data_file(data_dir: str | Path | None, rel: str, what: str) -> Path:
    """Locate ``rel`` (e.g. ``safety/xstest_prompts.csv``): ``data_dir`` may be the data root,
    a folder holding the file, or the file itself. With no ``data_dir`` and no file in the default
    folder, the file is fetched from its pinned public source (``sources.SOURCES``: checked against
    its sha256, cached under the HF cache). Missing -> a DataError saying where it looked."""
    from thinksafe.benchmarks import sources
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if base.is_file():
        return base
    tried = [base / rel, base / Path(rel).name]
    for p in tried:
        if p.is_file():
            return p
    src = sources.BY_FILE.get(rel)
    if data_dir is None and src is not None and src.fetchable:
        return sources.fetch(src)
    hint = ("leave evaluate.data_dir unset to fetch it from its pinned source"
            if src is not None and src.fetchable else "pass data_dir or set THINKSAFE_DATA to the shared/data folder")
    raise DataError(f"{what}: file not found (looked for {', '.join(map(str, tried))}); {hint}")


def data_provenance(name: str, data_dir: str | Path | None) -> dict:
    """Where benchmark ``name`` (a module name) is read from: file, sha256, source, checksum verdict."""
    from thinksafe.benchmarks import sources
    module = get(name)
    path = module.find_file(data_dir) if hasattr(module, "find_file") else data_file(data_dir, module.FILE, name)
    return sources.provenance(name, path)


def head(items: list, limit: int | None) -> list:
    """The first ``limit`` items (all if None); a negative limit is an error."""
    if limit is None:
        return items
    if limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    return items[:limit]


def require(row: dict, key: str, path: Path, i: int):
    """``row[key]``, or a DataError naming the file, row and available fields."""
    if key not in row or row[key] is None:
        raise DataError(f"{path}: row {i + 1} has no field '{key}' (fields: {', '.join(map(str, row))})")
    return row[key]

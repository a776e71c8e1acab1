"""The run folder's bookkeeping, below every stage: ``manifest.json`` updated under a file lock
(concurrent shard processes never lose an entry) and written atomically, and stale outputs moved
aside into ``old/`` instead of being deleted or half-overwritten."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from thinksafe.io import write_json

MANIFEST, OLD = "manifest.json", "old"


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on the run folder's manifest (``manifest.json.lock``), across processes."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f"{MANIFEST}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_manifest(run_dir: Path) -> dict:
    p = Path(run_dir) / MANIFEST
    m = json.loads(p.read_text()) if p.exists() else {}
    m.setdefault("stages", {})
    return m


def update_manifest(run_dir: Path, change) -> dict:
    """Read, ``change(manifest)`` in place, write atomically: all under the lock."""
    with locked(run_dir):
        m = read_manifest(run_dir)
        change(m)
        write_json(Path(run_dir) / MANIFEST, m)
    return m


def move_aside(run_dir: Path, rel_paths: Iterable[str], label: str) -> list[str]:
    """Move the existing ``rel_paths`` (files or folders, globs allowed) of ``run_dir`` into
    ``old/<time>-<label>/`` (same relative paths); returns what was moved. Nothing is deleted."""
    return move_aside_to(run_dir, rel_paths, label)[0]


def put_back(run_dir: Path, moved: list[str], dest: Path | None) -> None:
    """Undo ``move_aside_to`` for paths nothing has been written to since (a stage that failed
    before writing): they return to where they were."""
    if dest is None:
        return
    run_dir = Path(run_dir)
    for rel in moved:
        if not (run_dir / rel).exists() and (dest / rel).exists():
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dest / rel), str(run_dir / rel))
    for d in sorted(dest.rglob("*"), reverse=True):    # drop what is left empty
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()


def move_aside_to(run_dir: Path, rel_paths: Iterable[str], label: str) -> tuple[list[str], Path | None]:
    """``move_aside``, also returning the folder it moved into (None: nothing moved)."""
    run_dir = Path(run_dir)
    found: list[Path] = []
    for rel in rel_paths:
        found += sorted(run_dir.glob(rel)) if any(c in rel for c in "*?[") else \
            ([run_dir / rel] if (run_dir / rel).exists() else [])
    if not found:
        return [], None
    dest = run_dir / OLD / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.rsplit('~', 1)[0]}~{n}")
    moved = []
    for p in found:
        rel = p.relative_to(run_dir)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, target) if p.is_file() else shutil.move(str(p), str(target))
        moved.append(str(rel))
    return moved, dest

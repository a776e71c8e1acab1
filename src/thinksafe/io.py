"""Crash-safe JSONL (append + flush + fsync; a torn last line is ignored and cut), atomic writes.

Reads stream line by line (memory: one line at a time, plus the rows the caller keeps). A last line
without a trailing newline means two different things: in a file thinksafe appends to (generate,
judge, evaluate, GRPO logs: ``appended=True``, implied by ``repair``) it is a write torn by a crash
and is dropped (``repair`` also cuts it from the file); in any other file (a user's data, an
``external`` SFT set) it is simply the last row, kept when it parses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from thinksafe.errors import DataError


def _parse(p: Path, i: int, line: bytes) -> dict[str, Any]:
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{p}:{i + 1}: not valid JSON") from None


def iter_jsonl(path: str | Path, repair: bool = False, appended: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, one line in memory at a time; a missing file yields nothing.

    ``appended``: the file is one thinksafe appends to, so an unterminated last line is a torn write
    and is skipped (``repair``: and cut from the file, once the iteration reaches the end, so that
    appends continue cleanly). Otherwise an unterminated last line is a row like any other. A bad
    line anywhere else is a DataError naming it."""
    p = Path(path)
    if not p.exists():
        return
    appended = appended or repair
    good_bytes, torn = 0, False
    with open(p, "rb") as f:
        for i, line in enumerate(f):
            if not line.endswith(b"\n"):          # the last line, unterminated
                if appended:
                    torn = bool(line)
                    break
                if line.strip():
                    yield _parse(p, i, line)
                break
            good_bytes += len(line)
            if line.strip():
                yield _parse(p, i, line)
    if torn and repair:
        with open(p, "r+b") as f:
            f.truncate(good_bytes)


def read_jsonl(path: str | Path, repair: bool = False, appended: bool = False) -> list[dict[str, Any]]:
    """All rows of :func:`iter_jsonl` as a list (same torn-line rules)."""
    return list(iter_jsonl(path, repair=repair, appended=appended))


def append_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not data:
        return
    with open(p, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic: write a temp file, fsync, rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def write_text(path: str | Path, text: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)

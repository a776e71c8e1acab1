"""The other half of "validate, then write": a command that fails before any stage output changed
leaves the run folder's ``config.yaml`` and ``manifest.json`` byte-identical (and a folder it created
is removed again)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

BOOKKEEPING = ("config.yaml", "manifest.json", "manifest.json.lock")


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _, files in os.walk(run_dir):
        for f in files:
            p = Path(root) / f
            try:
                st = p.stat()
            except OSError:
                continue
            out[str(p.relative_to(run_dir))] = (st.st_size, st.st_mtime_ns)
    return out


@contextlib.contextmanager
def unchanged_on_failure(run_dir) -> Iterator[None]:
    """Run a command's writes; if it fails before any output (anything but the bookkeeping files)
    changed, put ``config.yaml`` / ``manifest.json`` back byte for byte (and remove a folder this
    command created). A stage that failed after writing outputs keeps its record of them."""
    run_dir = Path(run_dir)
    existed = run_dir.is_dir()
    before = _snapshot(run_dir) if existed else {}
    saved = {}
    for name in BOOKKEEPING:
        p = run_dir / name
        if p.is_file():
            st = p.stat()
            saved[name] = (p.read_bytes(), st.st_atime_ns, st.st_mtime_ns)
    try:
        yield
    except BaseException:
        try:
            _restore(run_dir, existed, before, saved)
        except OSError:         # never hide the original error
            pass
        raise


def _restore(run_dir: Path, existed: bool, before: dict, saved: dict) -> None:
    if not run_dir.is_dir():
        return
    after = _snapshot(run_dir)
    strip = lambda snap: {k: v for k, v in snap.items() if k not in BOOKKEEPING}  # noqa: E731
    if strip(after) != strip(before):
        return                  # outputs changed: the record must describe them
    for name in BOOKKEEPING:
        p = run_dir / name
        if name in saved:
            data, atime, mtime = saved[name]
            if not p.is_file() or p.read_bytes() != data:
                tmp = p.with_name(p.name + ".restore")
                tmp.write_bytes(data)
                os.replace(tmp, p)
            os.utime(p, ns=(atime, mtime))
        elif p.exists():
            p.unlink()
    if not existed:
        for d in sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            run_dir.rmdir()

"""A streamed, cached index over JSONL record files: byte offsets + small facet columns.

Built in one pass, one line in memory at a time; what stays in memory is a few compact arrays per
row (offsets as ``array('q')``, facets as codes into small vocabularies, numbers as floats), never
the text. The index is cached as JSON in a cache folder, keyed by the files' absolute paths, and is
valid while every file has the size and mtime it had when indexed; a file that changed is indexed
again. A torn last line (no trailing newline: a live run is still writing it) is skipped, like
``thinksafe.io.iter_jsonl(appended=True)``.

Several files make one index (``generated.jsonl`` then ``judged.jsonl``): a record id seen again
later wins, as in ``stages.dataset.read_judged`` (a later verdict judged the completion as it is
now).
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

INDEX_VERSION = 1
Extract = Callable[[dict], dict[str, Any]]   # record -> {column: str | float | None}


def cache_dir() -> Path:
    d = os.environ.get("THINKSAFE_VIEW_CACHE")
    if d:
        return Path(d)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "thinksafe" / "view"


def _stamp(p: Path) -> list:
    try:
        st = p.stat()
    except FileNotFoundError:
        return [str(p), -1, 0]
    return [str(p), st.st_size, st.st_mtime_ns]


class Column:
    """A facet column: codes into a vocabulary (strings, None allowed) or floats (NaN = None)."""

    def __init__(self, kind: str):
        self.kind = kind                      # "cat" | "num"
        self.vocab: list[str | None] = []
        self._code: dict[str | None, int] = {}
        self.data = array("I") if kind == "cat" else array("d")

    def fill(self, n: int) -> None:
        """``n`` empty values (None / NaN), to be ``set`` later."""
        if self.kind == "num":
            self.data = array("d", [float("nan")]) * n
        else:
            if None not in self._code:
                self._code[None] = len(self.vocab)
                self.vocab.append(None)
            self.data = array("I", [self._code[None]]) * n

    def _encode(self, v):
        """The stored form of ``v``: a float (NaN for None) or the code of its string in ``vocab``."""
        if self.kind == "num":
            return float("nan") if v is None else float(v)
        v = None if v is None else str(v)
        c = self._code.get(v)
        if c is None:
            c = self._code[v] = len(self.vocab)
            self.vocab.append(v)
        return c

    def append(self, v) -> None:
        self.data.append(self._encode(v))

    def set(self, i: int, v) -> None:
        self.data[i] = self._encode(v)

    def get(self, i: int):
        if self.kind == "num":
            x = self.data[i]
            return None if x != x else x
        return self.vocab[self.data[i]]

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab, "data": self.data.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Column:
        c = cls(d["kind"])
        c.vocab = list(d["vocab"])
        c._code = {v: i for i, v in enumerate(c.vocab)}
        c.data = array("I" if c.kind == "cat" else "d", d["data"])
        return c


class RecordIndex:
    """Rows of ``files`` (later ids win) with byte offsets and the columns ``extract`` returns."""

    def __init__(self, files: Iterable[Path], extract: Extract, columns: dict[str, str], key: str = ""):
        self.files = [Path(f).resolve() for f in files]
        self.extract, self.columns_spec, self.key = extract, dict(columns), key
        self.ids: list[str] = []
        self.file_no = array("B")
        self.offset = array("q")
        self.length = array("I")
        self.columns: dict[str, Column] = {}
        self.from_cache = False
        self.skipped_torn = 0

    # ------------------------------------------------------------------ build / cache
    def _cache_path(self) -> Path:
        h = hashlib.sha256(json.dumps([self.key, [str(f) for f in self.files],
                                       sorted(self.columns_spec.items())]).encode()).hexdigest()[:24]
        return cache_dir() / f"{h}.json"

    def stamps(self) -> list:
        return [_stamp(f) for f in self.files]

    def load(self, use_cache: bool = True) -> RecordIndex:
        cp = self._cache_path()
        stamps = self._stamps = self.stamps()
        if use_cache and cp.is_file():
            try:
                d = json.loads(cp.read_text())
                if d.get("version") == INDEX_VERSION and d.get("stamps") == stamps:
                    self._from_json(d)
                    self.from_cache = True
                    return self
            except (OSError, ValueError, KeyError):
                pass
        self.build()
        if use_cache and self.stamps() == stamps:          # not changed while we read it
            try:
                cp.parent.mkdir(parents=True, exist_ok=True)
                tmp = cp.with_name(f"{cp.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(self._to_json(stamps)))
                os.replace(tmp, cp)
            except OSError:
                pass                                         # a read-only cache is only slower
        return self

    def _lines(self):
        """(file number, byte offset, line) of every complete, non-empty line; a torn last line
        (no newline) is counted in ``skipped_torn`` and skipped."""
        for fno, path in enumerate(self.files):
            if not path.is_file():
                continue
            with open(path, "rb") as f:
                pos = 0
                for line in f:
                    start, pos = pos, pos + len(line)
                    if not line.endswith(b"\n"):
                        self.skipped_torn += bool(line.strip())
                        break
                    if line.strip():
                        yield fno, start, line

    def build(self) -> None:
        """Two streamed passes: (1) each line's id only (a fast look at the line's start, as
        thinksafe writes ``{"id": ...`` first), the last line of each id wins; (2) only the winning
        lines are parsed and their columns extracted."""
        self.skipped_torn = 0
        winner: dict[str, tuple[int, int, int]] = {}
        for fno, start, line in self._lines():
            rid = _fast_id(line)
            if rid is None:
                try:
                    rid = str(json.loads(line).get("id", f"{fno}:{start}"))
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                    continue                 # a bad line is not shown (the stages refuse it)
            winner[rid] = (fno, start, len(line))    # a later line for the same id wins
        n = len(winner)
        pos = {rid: i for i, rid in enumerate(winner)}   # rows in order of first appearance
        self.ids = list(winner)
        self.file_no = array("B", (w[0] for w in winner.values()))
        self.offset = array("q", (w[1] for w in winner.values()))
        self.length = array("I", (w[2] for w in winner.values()))
        self.columns = {k: Column(kind) for k, kind in self.columns_spec.items()}
        for c in self.columns.values():
            c.fill(n)
        self.skipped_torn = 0
        bad = []
        for fno, start, line in self._lines():
            rid = _fast_id(line)
            if rid is not None and winner.get(rid, (None, None))[:2] != (fno, start):
                continue
            try:
                d = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            rid = str(d.get("id", f"{fno}:{start}")) if isinstance(d, dict) else None
            if rid is None or winner.get(rid, (None, None))[:2] != (fno, start):
                continue
            try:
                vals = self.extract(d)
            except (TypeError, KeyError, ValueError, AttributeError):
                bad.append(pos[rid])         # not a record this viewer understands
                continue
            i = pos[rid]
            for k, c in self.columns.items():
                c.set(i, vals.get(k))
        if bad:
            self._drop_rows(set(bad))

    def _drop_rows(self, bad: set[int]) -> None:
        keep = [i for i in range(len(self.ids)) if i not in bad]
        self.ids = [self.ids[i] for i in keep]
        self.file_no = array("B", (self.file_no[i] for i in keep))
        self.offset = array("q", (self.offset[i] for i in keep))
        self.length = array("I", (self.length[i] for i in keep))
        for c in self.columns.values():
            c.data = array(c.data.typecode, (c.data[i] for i in keep))

    def _to_json(self, stamps) -> dict:
        return {"version": INDEX_VERSION, "stamps": stamps, "ids": self.ids,
                "file_no": self.file_no.tolist(), "offset": self.offset.tolist(),
                "length": self.length.tolist(), "skipped_torn": self.skipped_torn,
                "columns": {k: c.to_json() for k, c in self.columns.items()}}

    def _from_json(self, d: dict) -> None:
        self.ids = d["ids"]
        self.file_no = array("B", d["file_no"])
        self.offset = array("q", d["offset"])
        self.length = array("I", d["length"])
        self.skipped_torn = d.get("skipped_torn", 0)
        self.columns = {k: Column.from_json(c) for k, c in d["columns"].items()}

    def fresh(self) -> bool:
        """Whether the files are as they were when this index was read (else: ``load`` again)."""
        return self.stamps() == self._stamps

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.ids)

    def row(self, i: int) -> dict:
        return {"row": i, "id": self.ids[i], **{k: c.get(i) for k, c in self.columns.items()}}

    def record(self, i: int) -> dict:
        """The full JSON record of row ``i``, read from disk at its offset."""
        with open(self.files[self.file_no[i]], "rb") as f:
            f.seek(self.offset[i])
            return json.loads(f.read(self.length[i]))

    def position(self, rid: str) -> int | None:
        if getattr(self, "_pos", None) is None or len(self._pos) != len(self.ids):
            self._pos = {r: i for i, r in enumerate(self.ids)}
        return self._pos.get(rid)

    def select(self, filters: dict[str, list[str]] | None = None, query: str | None = None,
               text_of: Callable[[dict], str] | None = None) -> list[int]:
        """Rows matching every facet filter (a column's value in the given list) and the full-text
        query (case-insensitive, in ``text_of(record)``; raw lines are scanned, only hits parsed)."""
        rows = self.filter(range(len(self.ids)), filters)
        if query:
            rows = self._search(rows, query, text_of)
        return rows

    def filter(self, rows: Iterable[int], filters: dict[str, list[str]] | None) -> list[int]:
        for k, wanted in (filters or {}).items():
            c = self.columns.get(k)
            if c is None or not wanted or c.kind != "cat":
                continue
            codes = {i for i, v in enumerate(c.vocab) if _label(v) in wanted}
            data = c.data
            rows = [i for i in rows if data[i] in codes]
        return list(rows)

    def _search(self, rows: list[int], query: str, text_of) -> list[int]:
        q = query.lower()
        # the query as it appears inside a JSON string, written with or without ensure_ascii
        needles = {json.dumps(q, ensure_ascii=False)[1:-1].encode().lower(), json.dumps(q)[1:-1].encode().lower()}
        by_file: dict[int, list[int]] = {}
        for i in rows:
            by_file.setdefault(self.file_no[i], []).append(i)
        hits = set()
        for fno, rs in by_file.items():
            with open(self.files[fno], "rb") as f:
                for i in sorted(rs, key=lambda i: self.offset[i]):
                    f.seek(self.offset[i])
                    line = f.read(self.length[i])
                    low = line.lower()
                    if not any(n in low for n in needles):
                        continue
                    if text_of is None or q in text_of(json.loads(line)).lower():
                        hits.add(i)
        return [i for i in rows if i in hits]

    def facets(self, rows: list[int], names: Iterable[str]) -> dict[str, dict[str, int]]:
        out = {}
        for k in names:
            c = self.columns[k]
            cnt = Counter(c.data[i] for i in rows)
            out[k] = {_label(c.vocab[code]): n for code, n in sorted(cnt.items(), key=lambda x: -x[1])}
        return out

    def sort(self, rows: list[int], key: str | None, desc: bool = False) -> list[int]:
        if not key or key == "order":
            return rows[::-1] if desc else rows
        if key == "id":
            return sorted(rows, key=lambda i: self.ids[i], reverse=desc)
        c = self.columns[key]
        if c.kind == "num":
            nan_last = float("-inf") if desc else float("inf")
            return sorted(rows, key=lambda i: nan_last if c.data[i] != c.data[i] else c.data[i], reverse=desc)
        return sorted(rows, key=lambda i: _label(c.vocab[c.data[i]]), reverse=desc)


_ID_PREFIX = b'{"id": "'


def _fast_id(line: bytes) -> str | None:
    """The id of a line thinksafe wrote (``{"id": "..."`` first, no escapes in it), else None."""
    if line.startswith(_ID_PREFIX):
        end = line.find(b'"', len(_ID_PREFIX))
        if end > 0:
            rid = line[len(_ID_PREFIX):end]
            if b"\\" not in rid:
                try:
                    return rid.decode()
                except UnicodeDecodeError:
                    return None
    return None


def fast_ids(path: Path) -> set[str]:
    """The ids of a JSONL file, parsing only lines whose id is not at their start."""
    out: set[str] = set()
    idx = RecordIndex([path], lambda d: {}, {})
    for _, _, line in idx._lines():
        rid = _fast_id(line)
        if rid is None:
            try:
                rid = json.loads(line).get("id")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
        if rid is not None:
            out.add(str(rid))
    return out


def _label(v) -> str:
    return "(none)" if v is None or v == "" else str(v)

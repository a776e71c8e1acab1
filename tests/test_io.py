"""Crash-safe JSONL and atomic writes."""

from __future__ import annotations

import json

import pytest

from thinksafe import io
from thinksafe.errors import DataError


def _lines_are_json(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_append_then_read(tmp_path):
    p = tmp_path / "sub" / "a.jsonl"
    io.append_jsonl(p, [{"a": 1}, {"b": "é"}])
    io.append_jsonl(p, [{"c": [1, 2]}])
    io.append_jsonl(p, [])                       # no-op, no blank line
    assert io.read_jsonl(p) == [{"a": 1}, {"b": "é"}, {"c": [1, 2]}]
    assert p.read_bytes().endswith(b"\n")
    assert len(p.read_text(encoding="utf-8").splitlines()) == 3
    assert list(io.iter_jsonl(p)) == io.read_jsonl(p)


def test_read_missing_file_is_empty(tmp_path):
    assert io.read_jsonl(tmp_path / "none.jsonl") == []


def test_blank_lines_are_skipped(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n   \n{"b": 2}\n')
    assert io.read_jsonl(p) == [{"a": 1}, {"b": 2}]


def test_torn_last_line_is_ignored(tmp_path):
    p = tmp_path / "a.jsonl"
    io.append_jsonl(p, [{"a": 1}, {"b": 2}])
    full = json.dumps({"c": 3, "text": "hello"}) + "\n"
    with open(p, "a") as f:
        f.write(full[: len(full) // 2])
    before = p.read_bytes()
    assert io.read_jsonl(p, appended=True) == [{"a": 1}, {"b": 2}]
    assert p.read_bytes() == before              # without repair the file is untouched


def test_torn_last_line_repaired_then_append(tmp_path):
    p = tmp_path / "a.jsonl"
    io.append_jsonl(p, [{"a": 1}, {"b": 2}])
    good = p.read_bytes()
    with open(p, "a") as f:
        f.write('{"c": 3, "te')
    assert io.read_jsonl(p, repair=True) == [{"a": 1}, {"b": 2}]
    assert p.read_bytes() == good                # the torn tail is cut, nothing else
    io.append_jsonl(p, [{"d": 4}])
    assert _lines_are_json(p) == [{"a": 1}, {"b": 2}, {"d": 4}]
    assert io.read_jsonl(p) == [{"a": 1}, {"b": 2}, {"d": 4}]


def test_repair_on_a_clean_file_changes_nothing(tmp_path):
    p = tmp_path / "a.jsonl"
    io.append_jsonl(p, [{"a": 1}])
    before = p.read_bytes()
    assert io.read_jsonl(p, repair=True) == [{"a": 1}]
    assert p.read_bytes() == before


def test_only_a_torn_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": ')
    assert io.read_jsonl(p, repair=True) == []
    assert p.read_bytes() == b""
    io.append_jsonl(p, [{"a": 1}])
    assert io.read_jsonl(p) == [{"a": 1}]


def test_torn_inside_a_utf8_character(tmp_path):
    p = tmp_path / "a.jsonl"
    io.append_jsonl(p, [{"a": "é"}])
    line = (json.dumps({"b": "é"}, ensure_ascii=False) + "\n").encode("utf-8")
    cut = line.index("é".encode("utf-8")) + 1     # half of the two-byte character
    with open(p, "ab") as f:
        f.write(line[:cut])
    assert io.read_jsonl(p, repair=True) == [{"a": "é"}]
    io.append_jsonl(p, [{"c": 3}])
    assert io.read_jsonl(p) == [{"a": "é"}, {"c": 3}]


def test_torn_before_the_newline_then_append(tmp_path):
    p = tmp_path / "a.jsonl"
    io.append_jsonl(p, [{"a": 1}])
    with open(p, "a") as f:
        f.write('{"b": 2}')                      # the row was written, its "\n" was not
    io.read_jsonl(p, repair=True)
    io.append_jsonl(p, [{"c": 3}])
    rows = io.read_jsonl(p)                      # must not raise DataError
    assert rows[0] == {"a": 1} and rows[-1] == {"c": 3}


def test_bad_line_in_the_middle_raises(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n{"b": oops}\n{"c": 3}\n')
    with pytest.raises(DataError, match=r":2: not valid JSON"):
        io.read_jsonl(p)
    before = p.read_bytes()
    with pytest.raises(DataError):
        io.read_jsonl(p, repair=True)
    assert p.read_bytes() == before              # repair never cuts good rows after a bad one


def test_write_json_atomic(tmp_path):
    p = tmp_path / "d" / "stats.json"
    io.write_json(p, {"a": 1, "b": [1, 2], "path": tmp_path})
    assert json.loads(p.read_text()) == {"a": 1, "b": [1, 2], "path": str(tmp_path)}
    io.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert sorted(x.name for x in p.parent.iterdir()) == ["stats.json"]


def test_write_json_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "stats.json"
    io.write_json(p, {"a": 1})

    def boom(obj, f, **kw):
        f.write('{"half": ')
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.json, "dump", boom)
    with pytest.raises(RuntimeError):
        io.write_json(p, {"a": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"a": 1}


def test_write_jsonl_and_text_atomic(tmp_path):
    p = tmp_path / "rows.jsonl"
    io.write_jsonl(p, [{"a": 1}, {"b": 2}])
    io.write_jsonl(p, [{"c": 3}])
    assert io.read_jsonl(p) == [{"c": 3}]
    t = tmp_path / "r.md"
    io.write_text(t, "hello\n")
    assert t.read_text() == "hello\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.md", "rows.jsonl"]


def test_user_file_keeps_an_unterminated_last_row(tmp_path):
    """A file thinksafe did not append to (a user's data): no trailing newline is not a torn write."""
    p = tmp_path / "user.jsonl"
    p.write_text('{"a": 1}\n{"b": 2}')
    before = p.read_bytes()
    assert io.read_jsonl(p) == [{"a": 1}, {"b": 2}]
    assert list(io.iter_jsonl(p)) == [{"a": 1}, {"b": 2}]
    assert p.read_bytes() == before
    p.write_text('{"only": 1}')                  # a one-row file without newline
    assert io.read_jsonl(p) == [{"only": 1}]
    p.write_text('{"a": 1}\n{"b": ')           # a user file with a broken last line: an error, not a silent drop
    with pytest.raises(DataError, match=r":2: not valid JSON"):
        io.read_jsonl(p)


def test_appended_file_drops_even_a_parsable_torn_line(tmp_path):
    p = tmp_path / "gen.jsonl"
    io.append_jsonl(p, [{"a": 1}])
    with open(p, "a") as f:
        f.write('{"b": 2}')
    assert io.read_jsonl(p, appended=True) == [{"a": 1}]
    assert io.read_jsonl(p) == [{"a": 1}, {"b": 2}]


def test_iter_jsonl_streams(tmp_path, monkeypatch):
    """Rows come one at a time: the first row is there before the file's bad tail is read, and the
    whole file is never read into one bytes object."""
    p = tmp_path / "big.jsonl"
    p.write_text('{"a": 1}\n' * 1000 + "not json\n")
    monkeypatch.setattr(type(p), "read_bytes", lambda self: (_ for _ in ()).throw(AssertionError("full read")))
    it = io.iter_jsonl(p)
    assert next(it) == {"a": 1}
    with pytest.raises(DataError, match=r":1001: not valid JSON"):
        list(it)

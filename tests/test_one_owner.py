"""One owner per concern, checked on the source: one guard factory (``runtime.make_guard``; the
guard classes are wrapped over a built backend by ``guards.over_backend`` only there)."""

from __future__ import annotations

import ast

from conftest import ROOT

SRC = ROOT / "src" / "thinksafe"


def _functions(name: str) -> list[str]:
    return [f"{p.relative_to(SRC)}:{n.lineno}" for p in SRC.rglob("*.py")
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef) and n.name == name]


def test_one_guard_factory():
    assert _functions("make_guard") == [f"runtime.py:{_functions('make_guard')[0].split(':')[1]}"]
    users = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
             if "over_backend(" in p.read_text() and p.name not in ("runtime.py", "__init__.py")]
    assert not users, f"build guards with runtime.make_guard, not guards.over_backend: {users}"


def test_no_factory_imported_under_another_name():
    aliased = [f"{p.relative_to(SRC)}: {a.name} as {a.asname}" for p in SRC.rglob("*.py")
               for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom)
               for a in n.names if a.asname and a.name in ("make_guard", "guard", "over_backend")]
    assert not aliased, aliased


def test_one_way_to_free_a_model(monkeypatch):
    """``runtime.release`` stops an engine (close, or shutdown, on the object or its backend) and then
    empties the caches; nothing else in the package calls the cache step but a vLLM engine's close."""
    import types

    from thinksafe import memory, runtime
    emptied, stopped = [], []
    monkeypatch.setattr(memory, "release_memory", lambda: emptied.append(1))
    runtime.release(types.SimpleNamespace(close=lambda: stopped.append("close")))
    runtime.release(types.SimpleNamespace(backend=types.SimpleNamespace(shutdown=lambda: stopped.append("shutdown"))))
    runtime.release(types.SimpleNamespace())                  # a transformers model: caches only
    assert stopped == ["close", "shutdown"] and len(emptied) == 3
    callers = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                     if p.name != "memory.py" and "release_memory()" in p.read_text())
    assert callers == ["backends/vllm.py", "runtime.py"], callers

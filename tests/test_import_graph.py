"""No import cycle inside the package — module-level or inside functions — and the library never imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path
from conftest import ROOT

SRC = ROOT / "src"
PKG = "thinksafe"


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / PKG).rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (functions included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:       # relative import
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            for name in names:
                while name and name not in mods:     # `import thinksafe.x.y` of a non-module: its module
                    name = name.rpartition(".")[0]
                if name.startswith(PKG) and name != mod and name != PKG:
                    graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_library_does_not_import_the_cli():
    def is_cli(m):
        return m == f"{PKG}.cli" or m.startswith(f"{PKG}.cli.")
    users = sorted(m for m, deps in import_graph().items()
                   if any(is_cli(d) for d in deps) and not is_cli(m) and m != f"{PKG}.__main__")
    assert not users, f"modules importing thinksafe.cli: {users}"


ORCHESTRATORS = (f"{PKG}.pipeline", f"{PKG}.compare")


def stage_rule_violations(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Stage module -> what it imports (anywhere in its body) that it must not: the pipeline, the
    compare orchestrator, or another stage. Helpers the stages share live below them."""
    stages = {m for m in graph if m.startswith(f"{PKG}.stages.")}
    out = {}
    for m in sorted(stages):
        bad = sorted(d for d in graph[m] if d in ORCHESTRATORS or (d in stages and d != m))
        if bad:
            out[m] = bad
    return out


def test_the_stage_rule_checker_finds_a_stage_importing_a_stage():
    graph = {f"{PKG}.stages.judge": {f"{PKG}.stages.resample", f"{PKG}.judging"},
             f"{PKG}.stages.resample": set(), f"{PKG}.stages.report": {f"{PKG}.pipeline"},
             f"{PKG}.pipeline": {f"{PKG}.stages.judge"}, f"{PKG}.judging": set()}
    assert stage_rule_violations(graph) == {f"{PKG}.stages.judge": [f"{PKG}.stages.resample"],
                                            f"{PKG}.stages.report": [f"{PKG}.pipeline"]}


def test_the_graph_sees_imports_inside_functions(tmp_path, monkeypatch):
    """A function-level import counts like a module-level one."""
    pkg = tmp_path / PKG / "stages"
    pkg.mkdir(parents=True)
    (tmp_path / PKG / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from thinksafe.stages.b import g\n    return g\n")
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    assert stage_rule_violations(import_graph()) == {f"{PKG}.stages.a": [f"{PKG}.stages.b"]}


def test_no_stage_imports_the_pipeline_or_another_stage():
    found = stage_rule_violations(import_graph())
    assert not found, "stages importing the pipeline, compare or another stage: " + \
        "; ".join(f"{m} -> {', '.join(d)}" for m, d in found.items())

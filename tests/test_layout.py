"""The test tree's own rules: ``tests/`` mirrors ``src/thinksafe/`` (each sub-folder names a
sub-package), and test files share helpers only through ``conftest.py``, never by importing each other."""

from __future__ import annotations

import ast

from conftest import ROOT, TESTS


def test_every_test_folder_is_a_subpackage():
    pkg = ROOT / "src" / "thinksafe"
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders, "tests/ has no sub-folders"
    missing = sorted(f for f in folders if not (pkg / f / "__init__.py").is_file())
    assert not missing, f"tests/ folders with no sub-package of the same name: {missing}"


def test_no_test_file_imports_another():
    bad = []
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.relative_to(TESTS)}: {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not bad, "import shared helpers from conftest instead: " + "; ".join(bad)


def test_source_modules_and_functions_stay_small():
    """Modules under ~400 lines, functions under ~60 (split by meaning when one grows past them)."""
    big = []
    for path in (ROOT / "src" / "thinksafe").rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 400:
            big.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                big.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not big, big

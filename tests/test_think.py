"""One rule for the reasoning block (thinksafe.think), and no other module splits at ``</think>``."""

from __future__ import annotations

import ast

from conftest import ROOT

from thinksafe.think import final_answer, split_response


def test_split_at_the_last_close():
    text = "<think>\nplan </think> not yet\n</think>\n\nThe answer is 4."
    assert split_response(text) == ("plan </think> not yet", "The answer is 4.")
    assert final_answer(text) == "\n\nThe answer is 4."


def test_no_close_means_no_answer():
    assert split_response("<think>\nstill thinking") == ("still thinking", None)
    assert final_answer("<think>\nstill thinking") is None
    assert split_response(None) == ("", None)


def test_oracle_and_baselines_use_the_same_rule():
    from thinksafe.baselines import EMPTY_THINK, strip_reasoning
    from thinksafe.organism.oracle import split_response as oracle_split
    text = "<think>a</think>b</think>c"
    assert oracle_split(text) == ("a</think>b", "c")
    assert strip_reasoning(text) == EMPTY_THINK + "c"
    assert oracle_split("<think>never closed") == (None, None)


def test_no_other_module_splits_at_think_close():
    """A split/rsplit/partition on "</think>" (or a THINK_CLOSE of its own) outside think.py
    is a second rule."""
    bad = []
    for path in (ROOT / "src" / "thinksafe").rglob("*.py"):
        if path.name == "think.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "split", "rsplit", "partition", "rpartition"):
                args = [a for a in node.args if isinstance(a, ast.Constant) and a.value == "</think>"]
                names = [a for a in node.args if isinstance(a, ast.Name) and a.id == "THINK_CLOSE"]
                if args or names:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "THINK_CLOSE"
                                                    for t in node.targets):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} defines THINK_CLOSE")
    assert not bad, "split with thinksafe.think instead: " + ", ".join(bad)

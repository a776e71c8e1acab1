"""benchmarks/organism_compare.py: mean ± sd over seeds and the BENCHMARKS.md block it rewrites."""

from __future__ import annotations

import importlib.util

from conftest import ROOT


def _mod():
    spec = importlib.util.spec_from_file_location("organism_compare", ROOT / "benchmarks" / "organism_compare.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def _rows(h, ratio):
    return {"rows": [
        {"method": "base", "harmful_rate": 0.9, "harmful_rate_oracle": 0.9, "over_refusal_rate": 0.0,
         "reasoning_accuracy": 1.0, "perplexity": None, "flops": 0.0, "flops_vs_thinksafe": 0.0, "seconds": 0.0},
        {"method": "grpo", "harmful_rate": h, "harmful_rate_oracle": h, "over_refusal_rate": 0.0,
         "reasoning_accuracy": 1.0, "perplexity": None, "flops": 1e12, "flops_vs_thinksafe": ratio,
         "seconds": 10.0, "notes": "stopped: FLOP budget"}]}


def test_mean_sd_and_table():
    m = _mod()
    assert m.mean_sd([0.1, 0.3], "{:.3f}") == "0.200 ± 0.141"
    assert m.mean_sd([None, None], "{:.3f}") == "–"
    assert m.mean_sd([0.1, None], "{:.3f}") == "n/a"          # a hole is not averaged away
    t = m.table({0: _rows(0.5, 12.0), 1: _rows(0.7, 12.5)})
    assert "| GRPO (guard reward) | 0.600 ± 0.141 |" in t
    assert "| base | 0.900 ± 0.000 |" in t and "12.25 ± 0.35" in t
    lines = m.grpo_lines({0: _rows(0.5, 12.0)})
    assert lines == ["- seed 0: GRPO used 12.0× ThinkSafe's FLOPs; stopped: FLOP budget"]


def test_benchmarks_md_has_the_block():
    m = _mod()
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert text.count(m.START) == 1 and text.count(m.END) == 1 and text.index(m.START) < text.index(m.END)


def test_category_table_pools_over_seeds(tmp_path):
    import json
    m = _mod()

    def metrics(seed, method, sub, groups, forms):
        p = tmp_path / f"seed-{seed}" / method / sub / "eval" / method / "metrics.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"harmful_by_group": groups, "by_form": forms}))
    g = lambda n, o: {"n": n, "oracle": o, "guard": o}      # noqa: E731
    metrics(0, "base", ".", {"S1": g(10, 0.5), "S1/plain": g(5, 0.2), "S14": g(4, 1.0)}, {"plain": 0.2, "adversarial": 0.6})
    metrics(1, "base", ".", {"S1": g(30, 0.1), "S14": g(4, 0.5)}, {"plain": 0.4, "adversarial": 0.8})
    metrics(0, "grpo", "old/20261205-evaluate", {"S1": g(10, 0.9)}, {"plain": 0.0})   # moved aside: not read
    metrics(0, "grpo", ".", {"S1": g(10, 0.3)}, {"plain": 0.0})
    metrics(1, "grpo", ".", {"S1": g(10, 0.1)}, {"plain": 0.1})
    t = m.category_table(tmp_path, {0: _rows(0.5, 1.0), 1: _rows(0.5, 1.0)})
    lines = t.splitlines()
    assert lines[0] == "| method | S1 | S14 | plain | adversarial |"           # S1/plain is no category
    assert lines[2] == "| base | 0.20 (n=40) | 0.75 (n=8) | 0.30 | 0.70 |"    # (5 + 3) / 40; n-weighted
    assert lines[3] == "| GRPO (guard reward) | 0.20 (n=20) | – | 0.05 | – |"

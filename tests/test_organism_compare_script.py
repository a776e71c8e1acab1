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

"""benchmarks/scale.py keeps working: every stage and probe at tiny sizes, in-process (seconds)."""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
scale_inputs = pytest.importorskip("scale_inputs")
pytestmark = pytest.mark.skipif(not (scale_inputs.DATA / "tokenizers" / "qwen3").is_dir(),
                                reason="the Qwen3 tokenizer (shared/data) is not present")


def _mib(text: str) -> float:
    return float(re.match(r"([\d,.]+) MiB", text).group(1).replace(",", ""))


def test_scale_rehearsal_at_tiny_sizes(tmp_path, capsys):
    import scale
    out = tmp_path / "rows.json"
    rc = scale.main(["--tiny", "--inprocess", "--work", str(tmp_path / "work"), "--json", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert rc == 0 and not [r for r in rows if "error" in r]
    assert data["inputs"]["vocab"] == 151936 and data["inputs"]["records"] == 40
    stages = {r["stage"] for r in rows}
    assert stages == set(scale.STAGES) | set(scale.PROBES)
    for stage in scale.STAGES:                      # both sizes measured, with records and memory
        got = sorted(r["size"] for r in rows if r["stage"] == stage and not r["before"])
        assert got == [20, 40]
    assert {r["stage"] for r in rows if r["before"]} >= scale.HAS_BEFORE
    # the old full-logits guard forward allocates far more than the last-position one
    guard = {r["before"]: _mib(r["largest_alloc"]) for r in rows if r["stage"] == "guard_probe"}
    assert guard[False] * 10 < guard[True]
    # judge counted guard tokens while judging; the old re-rendering count agrees
    judge = {(r["size"], r["before"]): r["guard_tokens"] for r in rows if r["stage"] == "judge"}
    assert judge[(40, False)] == judge[(40, True)] > 0
    assert "Targets:" in printed and "| judge | 40 | after |" in printed

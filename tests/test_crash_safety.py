"""Kill `thinksafe generate` / `thinksafe judge` from inside the write path (SIGKILL in the middle of an
append, leaving a torn line); reruns end with exactly the ids of an uninterrupted run — none missing, none
duplicated, no half-written line — and the rerun writes only the records that were not yet written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import TESTS

ARGS = ["--set", "prompts.n_harmful=24", "--set", "prompts.n_reasoning=24", "--set", "prompts.n_borderline=8",
        "--set", "generate.max_new_tokens=16", "--set", "model.batch_size=2", "--set", "guard.batch_size=2",
        "--quiet"]
RUNNER = TESTS / "crash_runner.py"


def _cmd(stage, cfg):
    return [sys.executable, "-m", "thinksafe.cli", stage, str(cfg), *ARGS]


def _instrumented(stage, cfg):
    return [sys.executable, str(RUNNER), stage, str(cfg), *ARGS]


def _ids(path):
    text = path.read_text()
    assert text.endswith("\n"), "a half-written line was left behind"
    rows = [json.loads(line) for line in text.splitlines()]
    return [r["id"] for r in rows]


def _complete_rows(path):
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip() and _parses(line))


def _parses(line):
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("stage", ["generate", "judge"])
def test_kill_inside_the_write_and_rerun_gives_the_same_ids(tiny_organism, tmp_path, stage):
    env = {**os.environ, "THINKSAFE_ORGANISM": str(tiny_organism[0])}
    ref_cfg, cfg = tmp_path / "ref.yaml", tmp_path / "cfg.yaml"
    ref_cfg.write_text(f"out: {tmp_path / 'ref'}\n")
    cfg.write_text(f"out: {tmp_path / 'crash'}\n")
    for c in (ref_cfg, cfg):
        if stage == "judge":   # judge needs generations first
            subprocess.run(_cmd("generate", c), env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(_cmd(stage, ref_cfg), env=env, check=True, capture_output=True, timeout=600)
    out = "generated.jsonl" if stage == "generate" else "judged.jsonl"
    path = tmp_path / "crash" / out
    for crash_at in (2, 3):          # each run dies in its own append number crash_at, mid-line
        p = subprocess.run(_instrumented(stage, cfg), env={**env, "THINKSAFE_CRASH_AT": str(crash_at)},
                           capture_output=True, timeout=600)
        assert p.returncode == -signal.SIGKILL, "the kill did not land inside the write path"
        assert not path.read_text().endswith("\n"), "no torn line: the kill did not land mid-write"
    done = _complete_rows(path)
    log = tmp_path / "appends.log"
    r = subprocess.run(_instrumented(stage, cfg), env={**env, "THINKSAFE_APPEND_LOG": str(log)},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ref, got = _ids(tmp_path / "ref" / out), _ids(path)
    assert len(got) == len(set(got)), "duplicated ids"
    assert sorted(got) == sorted(ref)
    rewritten = sum(int(n) for n in log.read_text().split())
    assert done > 0 and rewritten == len(ref) - done, "the rerun redid records that were already written"

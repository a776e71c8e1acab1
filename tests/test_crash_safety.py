"""SIGKILL `thinksafe generate` / `thinksafe judge` at arbitrary moments; reruns end with exactly the
ids of an uninterrupted run: none missing, none duplicated, no half-written line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["--set", "prompts.n_harmful=24", "--set", "prompts.n_reasoning=24", "--set", "prompts.n_borderline=8",
        "--set", "generate.max_new_tokens=16", "--set", "model.batch_size=2", "--set", "guard.batch_size=2",
        "--quiet"]


def _cmd(stage, cfg):
    return [sys.executable, "-m", "thinksafe.cli", stage, str(cfg), *ARGS]


def _ids(path):
    text = path.read_text()
    assert text.endswith("\n"), "a half-written line was left behind"
    rows = [json.loads(line) for line in text.splitlines()]
    return [r["id"] for r in rows]


def _run_with_kills(stage, cfg, env, kills, rng):
    for _ in range(kills):
        p = subprocess.Popen(_cmd(stage, cfg), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
    r = subprocess.run(_cmd(stage, cfg), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("stage", ["generate", "judge"])
def test_sigkill_and_rerun_gives_the_same_ids(tiny_organism, tmp_path, stage):
    env = {**os.environ, "THINKSAFE_ORGANISM": str(tiny_organism[0])}
    rng = random.Random(stage)
    ref_cfg, cfg = tmp_path / "ref.yaml", tmp_path / "cfg.yaml"
    ref_cfg.write_text(f"out: {tmp_path / 'ref'}\n")
    cfg.write_text(f"out: {tmp_path / 'crash'}\n")
    for c in (ref_cfg, cfg):
        if stage == "judge":   # judge needs generations first
            subprocess.run(_cmd("generate", c), env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(_cmd(stage, ref_cfg), env=env, check=True, capture_output=True, timeout=600)
    _run_with_kills(stage, cfg, env, kills=3, rng=rng)
    out = "generated.jsonl" if stage == "generate" else "judged.jsonl"
    ref, got = _ids(tmp_path / "ref" / out), _ids(tmp_path / "crash" / out)
    assert len(got) == len(set(got)), "duplicated ids"
    assert sorted(got) == sorted(ref)

"""Shards (--shard i/N) and resampling of fully rejected prompts (generate.max_attempts)."""

from __future__ import annotations

import json

import pytest

from thinksafe.config import load_config
from thinksafe.errors import ConfigError
from thinksafe.io import read_jsonl
from thinksafe.pipeline import prepare_run_dir, run_stage
from thinksafe.generation import in_shard, parse_shard
from conftest import ROOT

SMALL = ["prompts.n_harmful=6", "prompts.n_reasoning=6", "prompts.n_borderline=2",
         "generate.max_new_tokens=16", "model.batch_size=4", "guard.batch_size=4"]


def _cfg(out, *extra):
    return load_config(None, SMALL + [f"out={out}", *extra])


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ["4/4", "x", "1/0", "-1/2"]:
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_shards_are_disjoint_and_cover_everything():
    ids = [f"id{i}" for i in range(500)]
    parts = [{i for i in ids if in_shard(i, k, 3)} for k in range(3)]
    assert set().union(*parts) == set(ids)
    assert sum(len(p) for p in parts) == len(ids)
    assert all(len(p) > 100 for p in parts)


def test_sharded_generation_merges_into_the_judge(tiny_organism, tmp_path):
    whole = _cfg(tmp_path / "whole")
    run_stage("generate", whole, prepare_run_dir(whole), show=False)
    ref = {r["id"] for r in read_jsonl(tmp_path / "whole" / "generated.jsonl")}
    for k in range(2):
        cfg = _cfg(tmp_path / "sharded", f"generate.shard={k}/2")
        run_stage("generate", cfg, prepare_run_dir(cfg), show=False)     # same folder, no config clash
    files = sorted((tmp_path / "sharded").glob("generated.shard-*-of-2.jsonl"))
    shard_ids = [{r["id"] for r in read_jsonl(f)} for f in files]
    assert len(files) == 2 and not (shard_ids[0] & shard_ids[1])
    assert shard_ids[0] | shard_ids[1] == ref
    cfg = _cfg(tmp_path / "sharded")
    summary = run_stage("judge", cfg, prepare_run_dir(cfg), show=False)
    assert summary["judged"] == len(ref)
    assert {r["id"] for r in read_jsonl(tmp_path / "sharded" / "judged.jsonl")} == ref


def test_rejected_prompts_are_resampled(tiny_organism, tmp_path):
    # the tiny organism rarely closes </think> within 16 tokens: most samples are rejected
    cfg = _cfg(tmp_path / "r", "generate.max_attempts=3")
    run_dir = prepare_run_dir(cfg)
    run_stage("generate", cfg, run_dir, show=False)
    summary = run_stage("judge", cfg, run_dir, show=False)
    rounds = summary["acceptance_by_round"]
    assert rounds[0]["attempt"] == 0 and len(rounds) == 3
    assert rounds[1]["prompts"] > 0
    judged = read_jsonl(run_dir / "judged.jsonl")
    attempts = [r for r in judged if r["meta"].get("attempt")]
    assert attempts and all(r["steering"] == ("prefix" if r["label"] == "harmful" else None) for r in attempts)
    assert len({r["id"] for r in judged}) == len(judged)
    gen_ids = {r["id"] for r in read_jsonl(run_dir / "generated.jsonl")}
    assert {r["id"] for r in judged} == gen_ids
    # a rerun is a no-op: same ids, nothing generated again
    before = (run_dir / "generated.jsonl").read_text()
    run_stage("judge", cfg, run_dir, show=False)
    assert (run_dir / "generated.jsonl").read_text() == before
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["judge"]


@pytest.mark.parametrize("mode", ["static", "continuous"])
def test_generation_modes_return_one_completion_per_prompt_in_order(tiny_organism, mode):
    from thinksafe.backends.hf import HFBackend
    from thinksafe.organism import resolve_model_path
    from thinksafe.types import SamplingParams
    be = HFBackend(resolve_model_path("organism"), batch_size=4, generation=mode)
    prompts = [be.tokenizer.apply_chat_template([{"role": "user", "content": f"Tom has {i} apples."}],
                                                tokenize=False, add_generation_prompt=True) for i in range(6)]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    out = be.generate(prompts, params)
    ref = HFBackend(resolve_model_path("organism"), batch_size=4).generate(prompts, params)
    assert len(out) == 6
    assert [c.prompt_tokens for c in out] == [c.prompt_tokens for c in ref]
    assert all(c.finish_reason in ("stop", "length") and c.completion_tokens <= 8 for c in out)
    assert [c.text for c in out] == [c.text for c in ref]        # greedy: same text as plain generate


def test_generation_throughput_benchmark_runs_on_cpu(tmp_path):
    import subprocess
    import sys
    script = ROOT / "benchmarks" / "generation_throughput.py"
    r = subprocess.run([sys.executable, str(script), "--tiny", "--batch", "4", "--prompt-len", "8",
                        "--new-tokens", "8", "--repeats", "1", "--methods", "naive,static",
                        "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert all(isinstance(v, float) and v > 0 for v in rows.values()), rows
    assert "| static |" in r.stdout

"""Shards that cannot go missing: judge refuses an incomplete set, concurrent shard processes keep
every manifest entry, and `run` after the shards reuses them."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from thinksafe.config import load_config
from thinksafe.errors import DataError
from thinksafe.io import read_jsonl
from thinksafe.pipeline import prepare_run_dir, run_stage
from thinksafe.runfolder import read_manifest, update_manifest

SMALL = ["prompts.n_harmful=6", "prompts.n_reasoning=6", "prompts.n_borderline=2",
         "generate.max_new_tokens=16", "model.batch_size=4", "guard.batch_size=4"]


def _cfg(out, *extra):
    return load_config(None, SMALL + [f"out={out}", *extra])


def _shards(tmp_path, n=2):
    for k in range(n):
        cfg = _cfg(tmp_path / "r", f"generate.shard={k}/{n}")
        run_stage("generate", cfg, prepare_run_dir(cfg), show=False)
    return tmp_path / "r"


def test_killed_shard_makes_judge_refuse(tiny_organism, tmp_path):
    run_dir = _shards(tmp_path)
    f = run_dir / "generated.shard-1-of-2.jsonl"
    rows = f.read_text().splitlines(keepends=True)
    f.write_text("".join(rows[:2]))                 # shard 1 "killed" after two records
    cfg = _cfg(run_dir)
    with pytest.raises(DataError, match=rf"shard 1/2 \({len(rows) - 2} of {len(rows)} records missing"):
        run_stage("judge", cfg, prepare_run_dir(cfg), show=False)
    assert not (run_dir / "judged.jsonl").exists()
    # told to: judged, and what is missing is counted in the summary
    ok = _cfg(run_dir, "generate.allow_incomplete=true")
    s = run_stage("judge", ok, prepare_run_dir(ok), show=False)
    assert s["incomplete"] and s["missing_records"] == len(rows) - 2
    assert s["incomplete_shards"] == {"1/2": {"missing": len(rows) - 2, "expected": len(rows)}}


def test_missing_shard_file_is_named(tiny_organism, tmp_path):
    run_dir = _shards(tmp_path)
    (run_dir / "generated.shard-0-of-2.jsonl").unlink()
    cfg = _cfg(run_dir)
    with pytest.raises(DataError, match=r"shard 0/2 \(\d+ of \d+ records missing"):
        run_stage("judge", cfg, prepare_run_dir(cfg), show=False)


def test_run_after_shards_reuses_them(tiny_organism, tmp_path):
    from thinksafe.pipeline import ensure
    run_dir = _shards(tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.glob("generated.shard-*")}
    logs = []
    s = ensure("generate", _cfg(run_dir), run_dir, show=False, log=logs.append)
    assert any("2 shards finished with this config: recorded as done" in x for x in logs), logs
    assert any("[generate] unchanged" in x for x in logs), logs
    assert s["shards"] == 2 and s["records"] == 14
    assert not (run_dir / "generated.jsonl").exists()       # nothing generated again
    assert {p.name: p.read_bytes() for p in run_dir.glob("generated.shard-*")} == before


def test_unsharded_generate_completes_a_partial_set_of_shards(tiny_organism, tmp_path):
    run_dir = _shards(tmp_path)
    f = run_dir / "generated.shard-1-of-2.jsonl"
    kept = f.read_text().splitlines(keepends=True)[:2]
    f.write_text("".join(kept))
    cfg = _cfg(run_dir)
    s = run_stage("generate", cfg, prepare_run_dir(cfg), show=False)
    new = read_jsonl(run_dir / "generated.jsonl")
    assert s["records"] == 14 and s["reused_from_shards"] == 14 - len(new)
    shard_ids = {r["id"] for p in run_dir.glob("generated.shard-*") for r in read_jsonl(p)}
    assert not shard_ids & {r["id"] for r in new}


def _writer(run_dir, k, n):
    for j in range(n):
        update_manifest(run_dir, lambda m, k=k, j=j: m.setdefault("shards", {}).__setitem__(f"{k}.{j}", j))


def test_concurrent_manifest_updates_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, k, 25)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(read_manifest(tmp_path)["shards"]) == 100
    json.loads((tmp_path / "manifest.json").read_text())       # whole, valid JSON

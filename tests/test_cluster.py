"""cluster.engine: ray against a real local Ray cluster (2 CPUs) with the tiny organism on the
transformers backend: the same record ids, texts and verdicts as a local run, each record exactly
once even when a replica is killed mid-run, and a rerun after a dead driver regenerates nothing
already written. Select with ``-m ray``; without Ray they skip (THINKSAFE_REQUIRE_RAY=1: fail)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from thinksafe import cluster
from thinksafe.config import load_config
from thinksafe.io import read_jsonl
from thinksafe.pipeline import prepare_run_dir, run_stage
from thinksafe.runfolder import read_manifest

SMALL = ["prompts.n_harmful=8", "prompts.n_reasoning=8", "prompts.n_borderline=4",
         "generate.max_new_tokens=16", "model.batch_size=2", "guard.batch_size=2", "guard.max_input_tokens=256",
         "evaluate.n_harmful=4", "evaluate.n_reasoning=4", "evaluate.n_borderline=2",
         "evaluate.max_new_tokens=16"]
RAY = ["cluster.engine=ray", "cluster.replicas=2"]


def _cfg(out, *extra):
    return load_config(None, SMALL + [f"out={out}", *extra])


def _stage(name, cfg):
    return run_stage(name, cfg, prepare_run_dir(cfg), show=False)


def _ids(path):
    return [r["id"] for r in read_jsonl(path)]


def _have_ray() -> bool:
    try:
        import ray  # noqa: F401
        return True
    except ImportError:
        return False


needs_ray = pytest.mark.skipif(not _have_ray() and os.environ.get("THINKSAFE_REQUIRE_RAY") != "1",
                               reason="ray is not installed (pip install 'thinksafe[ray]')")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# ----------------------------------------------------------------------------- without Ray
def test_engine_ray_without_ray_is_one_line_exit_2(tmp_path):
    """A sitecustomize that makes `import ray` fail, as on a machine without the extra."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompts: {n_harmful: 2, n_reasoning: 2, n_borderline: 0}\n")
    r = subprocess.run([sys.executable, "-m", "thinksafe.cli", "generate", str(cfg), "--set", f"out={tmp_path / 'r'}",
                        "--set", "cluster.engine=ray", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "pip install 'thinksafe[ray]'" in lines[0], r.stderr
    assert not (tmp_path / "r" / "generated.jsonl").exists()


def test_cluster_is_in_no_stage_key():
    from thinksafe.pipeline import BY_NAME, stage_key
    empty = {"stages": {}}
    a, b = load_config(None, []), load_config(None, RAY + ["cluster.address=auto"])
    for name in ("generate", "judge", "evaluate"):
        assert stage_key(BY_NAME[name], a, empty)[0] == stage_key(BY_NAME[name], b, empty)[0]


def test_bad_engine_is_refused():
    from thinksafe.errors import ConfigError
    with pytest.raises(ConfigError, match="cluster.engine must be one of local, ray"):
        load_config(None, ["cluster.engine=slurm"])


def _check_per_replica(c: dict, run: Path, stage: str) -> None:
    """Per-replica rows and tokens add up to the stage's, each replica's rate is its own count
    over its own busy seconds."""
    assert set(c["replica_records"]) == set(c["replica_busy_seconds"]) == {"0", "1"}, c
    assert sum(c["replica_records"].values()) == c["records"] > 0
    if stage == "generate":
        rows = read_jsonl(run / "generated.jsonl")
        assert sum(c["replica_tokens"].values()) == sum(r["completion"]["completion_tokens"] for r in rows) > 0
    rate = "replica_tokens_per_second" if stage == "generate" else "replica_records_per_second"
    count = "replica_tokens" if stage == "generate" else "replica_records"
    for i, r in c[rate].items():
        busy = c["replica_busy_seconds"][i]               # rounded to 0.01 s in the summary
        assert c[count][i] / (busy + 0.005) - 0.1 <= r <= c[count][i] / max(busy - 0.005, 1e-9) + 0.1, c


def test_progress_line_shows_each_replicas_tokens_per_second(monkeypatch):
    """The one progress view: done/total, overall tok/s, replicas up and each replica's own tok/s
    (from the rows it returned). No cluster needed: a pool as the Ray run leaves it."""
    import io
    import types

    import rich.progress
    from rich.console import Console
    buf = io.StringIO()
    console = Console(file=buf, width=250, force_terminal=False)
    monkeypatch.setattr(rich.progress, "get_console", lambda: console)
    pool = cluster.Pool.__new__(cluster.Pool)
    pool.c = types.SimpleNamespace(replicas=2)
    pool.actors, pool.busy, pool.lost, pool.retried = {0: None, 1: None}, {0: 2.0, 1: 4.0}, 0, 0
    pool.records = pool.tokens = 0
    pool.replica_records, pool.replica_tokens = {}, {}
    with cluster.progress("generate", 6, pool, True) as advance:
        for replica, rows, tokens in ((0, 2, 300), (1, 2, 200), (0, 2, 100)):
            pool.last_replica = replica
            pool.credit(rows, tokens)
            advance(rows, tokens)
    line = buf.getvalue().strip().splitlines()[-1]
    assert "6/6" in line and "replicas 2/2 up · r0 200, r1 50 tok/s" in line, line
    assert (pool.records, pool.tokens) == (6, 600)
    s = cluster.Pool.summary.__get__(pool)
    pool._resources, pool.started, pool.units = {"num_cpus": 1, "num_gpus": 0}, 2, 3
    pool.c = types.SimpleNamespace(replicas=2, address="local")
    pool.kind, pool.startup_seconds, pool.run_seconds = "model", 0.0, 0.0
    summary = s()
    assert summary["replica_tokens"] == {"0": 400, "1": 200}
    assert summary["replica_tokens_per_second"] == {"0": 200.0, "1": 50.0}
    assert summary["replica_records"] == {"0": 4, "1": 2}


# ----------------------------------------------------------------------------- a real Ray cluster
@pytest.mark.ray
@needs_ray
def test_generate_judge_evaluate_on_ray_match_local(tiny_organism, ray_cluster, tmp_path):
    """generate and judge greedy (generate.temperature=0): the same ids (each once), texts and
    verdicts as the local run. evaluate sampled (the organism's T 0.6): the same texts too, since
    the units are the local chunks and the transformers backend's per-batch seeds see the same
    batches whichever replica draws them."""
    local, ray_ = _cfg(tmp_path / "local", "generate.temperature=0"), \
        _cfg(tmp_path / "ray", "generate.temperature=0", *RAY)
    for name in ("generate", "judge"):
        _stage(name, local)
        s = _stage(name, ray_)
        assert s["cluster"]["replicas_started"] == 2 and s["cluster"]["replicas_lost"] == 0
        assert all(v > 0 for v in s["cluster"]["replica_busy_seconds"].values()), s["cluster"]
        _check_per_replica(s["cluster"], tmp_path / "ray", name)
    for f in ("generated.jsonl", "judged.jsonl"):
        a, b = read_jsonl(tmp_path / "local" / f), read_jsonl(tmp_path / "ray" / f)
        assert Counter(r["id"] for r in b).most_common(1)[0][1] == 1
        assert {r["id"]: (r["completion"]["text"], r["verdict"]) for r in a} == \
               {r["id"]: (r["completion"]["text"], r["verdict"]) for r in b}
    ml, mr = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert ml["stages"]["generate"]["key"] == mr["stages"]["generate"]["key"]
    gen = mr["stages"]["generate"]["compute"]
    assert gen["processes"] == 2 and gen["devices"] == 2 and gen["device_seconds"] > 0

    # evaluate (base model, sampled): generation and judging on the replicas, same files and texts
    from thinksafe.stages.evaluate import evaluate_model
    evaluate_model(local, tmp_path / "local", "base", show=False)
    s = _stage("evaluate", ray_)            # base only: not recorded as finished, but summarized
    assert s["cluster"]["pools"] == ["model", "guard"] and s["cluster"]["replicas_started"] == 4
    from thinksafe.compute import stage_compute
    c = stage_compute("evaluate", s, None, None, tmp_path / "ray")
    assert c["processes"] == 4 and c["device_seconds"] > 0          # every replica counted
    for f in ("generations.jsonl", "judged.jsonl", "steered_generations.jsonl"):
        a = read_jsonl(tmp_path / "local" / "eval" / "base" / f)
        b = read_jsonl(tmp_path / "ray" / "eval" / "base" / f)
        assert len(b) == len({r["id"] for r in b}) == len(a)
        assert {r["id"]: (r["completion"]["text"], r.get("verdict")) for r in a} == \
               {r["id"]: (r["completion"]["text"], r.get("verdict")) for r in b}


@pytest.mark.ray
@needs_ray
def test_dead_driver_and_killed_replicas_lose_nothing_and_duplicate_nothing(tiny_organism, ray_cluster,
                                                                            tmp_path, monkeypatch):
    from thinksafe.generation import expected_records

    class DriverDied(Exception):
        pass
    written = []

    def die_after_two_units(pool, k):
        written.append(k)
        if len(written) == 2:
            raise DriverDied                # the driver stops; the units in flight are lost
    monkeypatch.setattr(cluster, "after_unit_hook", die_after_two_units)
    cfg = _cfg(tmp_path / "r", *RAY, "generate.samples=2")
    expected = {r.id for r in expected_records(cfg)}
    with pytest.raises(DriverDied):
        _stage("generate", cfg)
    f = tmp_path / "r" / "generated.jsonl"
    before = f.read_bytes()
    n_before = len(_ids(f))
    assert n_before == 8                    # two units of 2 * model.batch_size records

    # rerun; its first replica is SIGKILLed once the first unit is written
    killed = []

    def kill_first_replica(pool, k, how="sigkill"):
        if killed:
            return
        i, pid = sorted(pool.live_pids().items())[0]
        killed.append(pid)
        if how == "sigkill":
            os.kill(pid, signal.SIGKILL)
        else:
            ray_cluster.kill(pool.actors[i])
    monkeypatch.setattr(cluster, "after_unit_hook", kill_first_replica)
    s = _stage("generate", cfg)
    ids = _ids(f)
    assert f.read_bytes().startswith(before)                    # what was written stays as it was
    assert s["cluster"]["records"] == len(expected) - n_before  # nothing already written regenerated
    assert killed and s["cluster"]["replicas_lost"] == 1 and s["cluster"]["units_retried"] >= 1, s["cluster"]
    assert s["cluster"]["replicas_started"] == 3                # one started in place of the dead one
    assert len(ids) == len(set(ids)) and set(ids) == expected   # every record exactly once

    # the guard's replicas: ray.kill one while judging
    killed.clear()
    monkeypatch.setattr(cluster, "after_unit_hook", lambda pool, k: kill_first_replica(pool, k, "ray.kill"))
    s = _stage("judge", cfg)
    judged = _ids(tmp_path / "r" / "judged.jsonl")
    assert killed and s["cluster"]["replicas_lost"] == 1 and s["cluster"]["units_retried"] >= 1
    assert len(judged) == len(set(judged)) and set(judged) == expected

    # a local rerun of the finished Ray run keeps it: same key, nothing generated
    monkeypatch.setattr(cluster, "after_unit_hook", None)
    logs = []
    run_stage("generate", _cfg(tmp_path / "r", "generate.samples=2"), tmp_path / "r", show=False, log=logs.append)
    assert any("[generate] unchanged" in x for x in logs), logs

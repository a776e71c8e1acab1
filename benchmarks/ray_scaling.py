"""Organism generation on a local Ray cluster with 1 and 2 replicas (``cluster.engine: ray``).

The shipped organism base on the transformers backend, the demo's sampling (T 0.6) and
``max_new_tokens``, ``--prompts`` training prompts (half harmful, half reasoning), one fresh run
folder per setting, all in one process with one Ray instance (``ray.init(num_cpus=2)``):

- ``local``: ``cluster.engine: local`` with 1 torch thread (``--local-threads``);
- ``ray 1x1`` and ``ray 2x1``: one and two replicas of 1 CPU (1 torch thread) each: the scaling
  ratio; ``ray 1x1`` against ``local`` is the same compute, so the difference is Ray's cost
  (replica start: worker process, imports, model load; then the per-unit dispatch);
- ``--composition`` adds ``local b/2``: local with half the batch size, whose ``differ`` column is
  how many texts batch composition changes on the transformers backend (it seeds each batch);
- ``--two-threads`` adds ``local 2t`` (torch's default 2 threads) and ``ray 1x2`` (one replica of
  2 CPUs).

Prints per setting the stage's wall time, the replicas' start-up, the time with units in flight,
and the texts that differ from the local run (the units are the local run's chunks, so 0 is
expected); then the 2x1 / 1x1 ratio, and the Ray overhead per record = (time with units in flight
- the replicas' busy time / replicas) / records, i.e. what the driver's scheduling and the
transfers cost beyond the generation itself.

    PYTHONPATH=src python benchmarks/ray_scaling.py --prompts 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _spin(_) -> float:
    import torch
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    t = time.time()
    for _ in range(2000):
        a @ a
    return time.time() - t


def ceiling() -> float:
    """This machine's 2-process scaling right now: one CPU-bound job in one process, then two in
    two (plain multiprocessing, no Ray). ~2x on an idle 2-core machine; what Ray can reach at best."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as p:
        p.map(_spin, [0, 1])                       # warm-up: imports
        t = time.time()
        p.map(_spin, [0])
        one = time.time() - t
        t = time.time()
        p.map(_spin, [0, 1], chunksize=1)
        two = time.time() - t
    return 2 * one / two


def run_one(name: str, sets: list[str], root: Path, show: bool, threads: int | None = None) -> dict:
    import torch

    from thinksafe.config import load_config
    from thinksafe.io import read_jsonl
    from thinksafe.pipeline import prepare_run_dir, run_stage
    cfg = load_config("configs/demo.yaml", [*sets, f"out={root / name.replace(' ', '_')}"])
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    try:
        s = run_stage("generate", cfg, prepare_run_dir(cfg), show=show)
    finally:
        torch.set_num_threads(before)
    wall = time.time() - t0
    texts = {r["id"]: r["completion"]["text"] for r in read_jsonl(Path(cfg.out) / "generated.jsonl")}
    c = s.get("cluster") or {}
    busy = sum((c.get("replica_busy_seconds") or {}).values())
    return {"setting": name, "records": s["records"], "completion_tokens": s["completion_tokens"],
            "wall_s": round(wall, 2), "startup_s": c.get("startup_seconds"), "run_s": c.get("run_seconds"),
            "busy_s": round(busy, 2) if c else None, "replicas": c.get("replicas"),
            "units": c.get("units"), "texts": texts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8, help="model.batch_size (units of 2x this)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--local-threads", type=int, default=1)
    ap.add_argument("--two-threads", action="store_true", help="also local with 2 threads and 1 replica of 2 CPUs")
    ap.add_argument("--composition", action="store_true",
                    help="also local with half the batch size: how many texts change with batch composition")
    ap.add_argument("--greedy", action="store_true", help="generate.temperature=0 everywhere")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--show", action="store_true")
    a = ap.parse_args()
    machine = ceiling()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    base = [f"prompts.n_harmful={a.prompts // 2}", f"prompts.n_reasoning={a.prompts - a.prompts // 2}",
            "prompts.n_borderline=0", f"model.batch_size={a.batch_size}",
            f"generate.max_new_tokens={a.max_new_tokens}"] + (["generate.temperature=0"] if a.greedy else [])
    ray_ = ["cluster.engine=ray"]
    settings = {"local": ([], a.local_threads),
                "ray 1x1": (ray_ + ["cluster.replicas=1", "cluster.cpus_per_replica=1"], None),
                "ray 2x1": (ray_ + ["cluster.replicas=2", "cluster.cpus_per_replica=1"], None)}
    if a.two_threads:
        settings.update({"local 2t": ([], 2),
                         "ray 1x2": (ray_ + ["cluster.replicas=1", "cluster.cpus_per_replica=2"], None)})
    if a.composition:   # other batches, same records: the transformers backend seeds per batch
        settings["local b/2"] = ([f"model.batch_size={max(a.batch_size // 2, 1)}"], a.local_threads)
    root = Path(tempfile.mkdtemp(prefix="ray_scaling-"))
    rows = []
    try:
        for name, (sets, threads) in settings.items():
            rows.append(run_one(name, base + sets, root, a.show, threads))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    local = rows[0]["texts"]
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, {rows[0]['records']} records, "
          f"{rows[0]['completion_tokens']} generated tokens")
    print(f"{'setting':8} {'wall s':>7} {'start s':>8} {'run s':>7} {'busy s':>7} {'units':>5} {'differ':>6}")
    for r in rows:
        r["differ_from_local"] = sum(r["texts"].get(k) != v for k, v in local.items())
        print(f"{r['setting']:8} {r['wall_s']:7.1f} {r['startup_s'] or 0:8.1f} {r['run_s'] or 0:7.1f} "
              f"{r['busy_s'] or 0:7.1f} {r['units'] or 0:5} {r['differ_from_local']:6}")
    by = {r["setting"]: r for r in rows}
    n = rows[0]["records"]
    ratio = by["ray 1x1"]["run_s"] / by["ray 2x1"]["run_s"]
    rays = [k for k in by if k.startswith("ray")]
    overhead = {k: (by[k]["run_s"] - by[k]["busy_s"] / by[k]["replicas"]) / n for k in rays}
    print(f"this machine's ceiling (2 plain processes vs 1, CPU-bound): {machine:.2f}x")
    print(f"2 replicas vs 1 (1 CPU each), time with units in flight: {ratio:.2f}x "
          f"(whole stage incl. start-up: {by['ray 1x1']['wall_s'] / by['ray 2x1']['wall_s']:.2f}x)")
    print("Ray overhead per record (run - busy/replicas) / records: "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in overhead.items()))
    per = (by["ray 1x1"]["wall_s"] - by["local"]["wall_s"]) / n
    print(f"ray 1x1 vs local (same compute, {a.local_threads} thread): whole stage {by['ray 1x1']['wall_s']:.1f} s "
          f"vs {by['local']['wall_s']:.1f} s = {per * 1000:+.1f} ms per record (replica start-up "
          f"{by['ray 1x1']['startup_s']:.1f} s included)")
    if a.json:
        for r in rows:
            r.pop("texts")
        a.json.write_text(json.dumps({"rows": rows, "ratio_2x1_over_1x1": ratio, "machine_ceiling": machine, "vs_local_per_record_s": per,
                                      "overhead_per_record_s": overhead,
                                      "load_average": os.getloadavg()[0]}, indent=2))


if __name__ == "__main__":
    main()

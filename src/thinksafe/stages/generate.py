"""generate: the model answers its own training prompts; harmful prompts are steered to refuse.

Appends to ``generated.jsonl`` in flushed, fsynced chunks; a rerun continues where it stopped.
``generate.shard: i/N`` writes ``generated.shard-i-of-N.jsonl`` instead (one process per GPU);
an unsharded run in a folder that holds shards generates only what the shards do not hold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from thinksafe import steering
from thinksafe.generation import (expected_records, generate_records, in_shard, output_path, parse_shard,
                                  read_generated, summarize)
from thinksafe.io import iter_jsonl
from thinksafe.runtime import release, student_backend
from thinksafe.types import Record


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    t0 = time.time()
    i, n = parse_shard(cfg.generate.shard)
    records = [r for r in expected_records(cfg) if in_shard(r.id, i, n)]
    steering.resolve(cfg.generate.steering)          # fail early on a bad template
    # unsharded: what shard processes already wrote is reused, not generated again
    done: dict[str, Record] = {r.id: r for r in read_generated(run_dir)} if n == 1 else {}
    wanted = {r.id for r in records}
    done = {k: v for k, v in done.items() if k in wanted}
    reused = len(done) if n == 1 else _saved(output_path(run_dir, i, n), wanted)
    if reused:
        print(f"generate: reused {reused} of {len(records)} records already generated in {run_dir}",
              file=sys.stderr, flush=True)
    backend = _LazyBackend(cfg) if n == 1 and reused == len(records) else student_backend(cfg)
    try:
        out = generate_records(backend, records, cfg, cfg.generate.steering, output_path(run_dir, i, n),
                               cfg.generate.max_new_tokens, "generate" if n == 1 else f"generate {i}/{n}",
                               show, done=done)
    finally:
        cluster = getattr(backend, "cluster_summary", None)     # cluster.engine: ray
        cluster = cluster() if callable(cluster) else None
        release(backend)          # the judge stage's guard gets the memory
    summary = {**summarize(out, t0), "shard": f"{i}/{n}"}
    if cluster:
        summary["cluster"] = cluster
    if reused and n == 1:
        summary["reused_from_shards"] = reused
    return summary


def _saved(path: Path, wanted: set[str]) -> int:
    """How many of the wanted records a shard's file already holds (its process resumes them)."""
    return len({d["id"] for d in iter_jsonl(path, repair=True) if d.get("id") in wanted})


class _LazyBackend:
    """Stands in for the model when every record already exists (no model is loaded)."""

    def __init__(self, cfg):
        self.batch_size = cfg.model.batch_size

"""judge: the guard judges each (ORIGINAL prompt, full response). Fail closed, resumable.

A verdict is tied to the text it judged (``meta.judged_sha256``): a completion that changed under
the same id is judged again. A sharded generation must be complete (every record of every shard
present) unless ``generate.allow_incomplete`` is set, in which case what is missing is counted in
the summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.families import get_family
from thinksafe.generation import expected_records, missing_by_shard, read_generated, shard_files
from thinksafe.judging import acceptance, judge_records
from thinksafe.resample import resample
from thinksafe.runtime import make_guard

INPUT, OUTPUT = "generated.jsonl", "judged.jsonl"


def check_complete(cfg, run_dir: Path, records) -> dict:
    """Every expected record is there, or a DataError naming the shards short of records (unless
    ``generate.allow_incomplete``: then the counts go into the summary)."""
    have = {r.id for r in records}
    expected = expected_records(cfg)
    files = shard_files(run_dir)
    ns = sorted({int(f.name.rsplit("-of-", 1)[1].split(".")[0]) for f in files}) or [1]
    missing = missing_by_shard(expected, have, ns[-1])
    n_missing = sum(m for m, _ in missing.values())
    if not n_missing:
        return {}
    where = ", ".join(f"shard {k} ({m} of {e} records missing, "
                      f"{run_dir / ('generated.jsonl' if k == '0/1' else 'generated.shard-%s-of-%s.jsonl' % tuple(k.split('/')))})"
                      for k, (m, e) in missing.items())
    if not cfg.generate.allow_incomplete:
        hint = ("rerun `thinksafe generate --shard I/N` for each, or `thinksafe run`" if files
                else "rerun `thinksafe generate`")
        raise DataError(f"judge: the generation is incomplete: {where}; {hint} "
                        "(or pass --allow-incomplete to judge what is there)")
    return {"incomplete": True, "missing_records": n_missing,
            "incomplete_shards": {k: {"missing": m, "expected": e} for k, (m, e) in missing.items()}}


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    t0 = time.time()
    records = read_generated(run_dir)
    if not records:
        raise DataError(f"{run_dir / INPUT} is missing or empty; run `thinksafe generate` first")
    gaps = check_complete(cfg, run_dir, records)
    guard = make_guard(cfg)
    resumed: dict = {}
    out = judge_records(guard, records, run_dir / OUTPUT, show=show, stats=resumed)
    if resumed.get("reused"):
        print(f"judge: reused {resumed['reused']} of {len(records)} verdicts already in {run_dir / OUTPUT}",
              file=sys.stderr, flush=True)
    rounds = [acceptance(out, get_family(cfg.model.family).thinks)]
    if cfg.generate.max_attempts > 1:
        out, rounds = resample(cfg, run_dir, guard, out, show)
    labels = Counter(r.verdict.label for r in out)
    from thinksafe.compute import verdict_input_tokens    # counted by the guard while judging
    from thinksafe.runtime import release
    cluster = guard.cluster_summary() if callable(getattr(guard, "cluster_summary", None)) else None
    release(guard)
    return {**({"cluster": cluster} if cluster else {}),"judged": len(out), **{f"verdict_{k}": v for k, v in sorted(labels.items())},
            "truncated_inputs": sum(r.verdict.truncated_tokens > 0 for r in out),
            "acceptance_by_round": rounds, "seconds": round(time.time() - t0, 1), **gaps,
            "guard_input_tokens": verdict_input_tokens([r.verdict for r in out], guard,
                                                       [(r.prompt, r.completion.text) for r in out])}

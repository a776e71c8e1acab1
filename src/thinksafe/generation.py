"""Generation shared by the stages (generate, judge's resampling, evaluate, baselines, grpo checks):
sample expansion, resumable batched generation, and the shards of ``generated.jsonl``.

Lives below ``thinksafe.stages`` so that no stage imports another."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

from thinksafe import steering
from thinksafe.errors import ConfigError
from thinksafe.families import restore_prefill
from thinksafe.io import append_jsonl, iter_jsonl, read_jsonl
from thinksafe.runtime import family_of, progress_bar, render_prompt, sampling
from thinksafe.types import Record, stable_id

OUTPUT = "generated.jsonl"


def expand(records: list[Record], samples: int) -> list[Record]:
    out = []
    for r in records:
        for s in range(samples):
            rid = r.id if samples == 1 else stable_id(r.id, s)
            out.append(replace(r, id=rid, sample=s, meta={**r.meta, "prompt_id": r.id}))
    return out


def generate_records(backend, records: list[Record], cfg, steer: str, out_path: Path | None,
                     max_new_tokens: int, desc: str, show: bool = True,
                     chunk: int | None = None, done: dict[str, Record] | None = None) -> list[Record]:
    """Generate for every record not yet in ``out_path`` (nor in ``done``); returns all records
    (old + new) in the order of ``records``."""
    family = family_of(cfg)
    done = dict(done or {})
    if out_path:
        done.update({d["id"]: Record.from_json(d) for d in read_jsonl(out_path, repair=True)})
    todo = [r for r in records if r.id not in done]
    if todo and getattr(backend, "distributed", False):     # cluster.engine: ray (thinksafe.cluster)
        return backend.generate_records(records, todo, done, cfg, steer, out_path, max_new_tokens, desc,
                                        show, chunk, generate_records)
    if todo and callable(getattr(backend, "stream", None)):
        new_stream = _generate_streaming(backend, todo, cfg, steer, out_path, max_new_tokens, desc,
                                         show, len(records) - len(todo), len(records))
        allrec = {**done, **new_stream}
        return [allrec[r.id] for r in records]
    chunk = chunk or max(backend.batch_size * 2, 1)
    new: dict[str, Record] = {}
    with progress_bar(desc, len(records), show) as advance:
        advance(len(records) - len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            by_sample: dict[int, list[Record]] = {}
            for r in part:
                by_sample.setdefault(r.sample, []).append(r)
            rows = []
            for s, group in sorted(by_sample.items()):
                params = sampling(cfg.generate, family, cfg.seed + 1000 * s, max_new_tokens)
                sent = [steering.apply(steer, r.prompt, r.label) for r in group]
                texts = [render_prompt(backend.tokenizer, t, family) for t, _ in sent]
                comps = backend.generate(texts, params, progress=advance)
                for r, (_, tname), c in zip(group, sent, comps):
                    c = replace(c, text=restore_prefill(family, c.text))
                    rec = replace(r, steering=tname, completion=c)
                    new[rec.id] = rec
                    rows.append(rec.to_json())
            if out_path:
                append_jsonl(out_path, rows)
    allrec = {**done, **new}
    return [allrec[r.id] for r in records]


# ----------------------------------------------------------------------------- shards
def sample_runs(todo: list[Record]) -> list[list[Record]]:
    """The pending records as engine requests: the samples of one prompt (same id family, same
    attempt) with consecutive sample indices form one request of n samples."""
    groups: dict[tuple, list[Record]] = {}
    for r in todo:
        groups.setdefault((r.meta.get("prompt_id", r.id), r.meta.get("attempt", 0), r.prompt, r.label),
                          []).append(r)
    runs = []
    for group in groups.values():
        group.sort(key=lambda r: r.sample)
        run = [group[0]]
        for r in group[1:]:
            if r.sample == run[-1].sample + 1:
                run.append(r)
            else:
                runs.append(run)
                run = [r]
        runs.append(run)
    return runs


def _generate_streaming(backend, todo: list[Record], cfg, steer: str, out_path: Path | None,
                        max_new_tokens: int, desc: str, show: bool, already: int, total: int,
                        flush_seconds: float = 1.0, flush_rows: int = 256) -> dict[str, Record]:
    """Every pending prompt to the backend at once (``backend.stream``: continuous batching), one
    request of n samples per prompt; completions are appended as they finish (at most
    ``flush_seconds`` / ``flush_rows`` of them unwritten), so a crash loses only those and a rerun
    generates just what is missing. Sample s of a prompt has seed ``cfg.seed + s`` (vLLM gives
    sample i of a request seeded S the seed S + i), whatever was already done."""
    family = family_of(cfg)
    runs = sample_runs(todo)
    sent = [steering.apply(steer, run[0].prompt, run[0].label) for run in runs]
    texts = [render_prompt(backend.tokenizer, t, family) for t, _ in sent]
    params = [sampling(cfg.generate, family, cfg.seed + run[0].sample, max_new_tokens) for run in runs]
    new: dict[str, Record] = {}
    rows: list[dict] = []
    last = time.time()
    with progress_bar(desc, total, show) as advance:
        advance(already)
        try:
            for k, comps in backend.stream(texts, params, [len(run) for run in runs]):
                for r, c in zip(runs[k], comps):
                    rec = replace(r, steering=sent[k][1],
                                  completion=replace(c, text=restore_prefill(family, c.text)))
                    new[rec.id] = rec
                    rows.append(rec.to_json())
                advance(len(comps))
                if out_path and rows and (len(rows) >= flush_rows or time.time() - last >= flush_seconds):
                    append_jsonl(out_path, rows)
                    rows, last = [], time.time()
        finally:            # an error (or Ctrl-C) keeps what has finished
            if out_path:
                append_jsonl(out_path, rows)
    return new


def parse_shard(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"generate.shard '{spec}' must look like i/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"generate.shard '{spec}': need 0 <= i < N")
    return i, n


def in_shard(record_id: str, i: int, n: int) -> bool:
    """Disjoint, deterministic shards: by the record id's hash, independent of order and count."""
    return n == 1 or int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) % n == i


def output_path(run_dir: Path, i: int, n: int) -> Path:
    return run_dir / (OUTPUT if n == 1 else f"generated.shard-{i}-of-{n}.jsonl")


def shard_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("generated.shard-*-of-*.jsonl"))


def read_generated(run_dir: Path) -> list[Record]:
    """generated.jsonl merged with every shard file, one record per id (first seen wins)."""
    files = [Path(run_dir) / OUTPUT, *shard_files(run_dir)]
    seen: dict[str, Record] = {}
    for f in files:
        for d in iter_jsonl(f, appended=True):       # thinksafe appends these
            seen.setdefault(d["id"], Record.from_json(d))
    return list(seen.values())


def expected_records(cfg) -> list[Record]:
    """Every record the generate stage must produce for this config (all shards together)."""
    from thinksafe.prompts import load_prompts
    return expand(load_prompts(cfg), cfg.generate.samples)


def missing_by_shard(expected: list[Record], have: set[str], n: int) -> dict[str, tuple[int, int]]:
    """``{"i/N": (missing, expected)}`` for every shard of ``n`` with records not in ``have``."""
    out: dict[str, list[int]] = {}
    for r in expected:
        i = next(k for k in range(n) if in_shard(r.id, k, n))
        c = out.setdefault(f"{i}/{n}", [0, 0])
        c[1] += 1
        c[0] += r.id not in have
    return {k: (m, e) for k, (m, e) in sorted(out.items()) if m}


def summarize(out: list[Record], t0: float) -> dict:
    finished = sum(r.completion.finish_reason == "stop" for r in out)
    return {"records": len(out), "finished": finished, "truncated": len(out) - finished,
            "completion_tokens": sum(r.completion.completion_tokens for r in out),
            "prompt_tokens": sum(r.completion.prompt_tokens for r in out),
            "seconds": round(time.time() - t0, 1)}

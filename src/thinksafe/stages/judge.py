"""judge: the guard judges each (ORIGINAL prompt, full response). Fail closed, resumable."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.io import append_jsonl, read_jsonl
from thinksafe.runtime import guard as make_guard
from thinksafe.runtime import progress_bar
from thinksafe.types import Record

INPUT, OUTPUT = "generated.jsonl", "judged.jsonl"


def judge_records(guard, records: list[Record], out_path: Path | None, desc: str = "judge",
                  show: bool = True, chunk: int | None = None) -> list[Record]:
    done = {d["id"]: Record.from_json(d) for d in read_jsonl(out_path, repair=True)} if out_path else {}
    todo = [r for r in records if r.id not in done]
    backend = getattr(guard, "backend", None)
    # vLLM batches continuously inside a call: hand it a chunk sized by its scheduler
    chunk = chunk or getattr(backend, "chunk_hint", None) or max(4 * getattr(backend, "batch_size", 32), 1)
    new: dict[str, Record] = {}
    with progress_bar(desc, len(records), show) as advance:
        advance(len(records) - len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            verdicts = guard.judge([(r.prompt, r.completion.text) for r in part], progress=advance)
            if len(verdicts) != len(part):
                raise DataError(f"guard returned {len(verdicts)} verdicts for {len(part)} records")
            judged = [replace(r, verdict=v) for r, v in zip(part, verdicts)]
            new.update({r.id: r for r in judged})
            if out_path:
                append_jsonl(out_path, [r.to_json() for r in judged])
    allrec = {**done, **new}
    return [allrec[r.id] for r in records]


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    t0 = time.time()
    from thinksafe.stages.generate import read_generated
    records = read_generated(run_dir)
    if not records:
        raise DataError(f"{run_dir / INPUT} is missing or empty; run `thinksafe generate` first")
    guard = make_guard(cfg)
    out = judge_records(guard, records, run_dir / OUTPUT, show=show)
    rounds = [acceptance(out)]
    if cfg.generate.max_attempts > 1:
        from thinksafe.stages.resample import resample
        out, rounds = resample(cfg, run_dir, guard, out, show)
    labels = Counter(r.verdict.label for r in out)
    from thinksafe.compute import verdict_input_tokens    # counted by the guard while judging
    from thinksafe.runtime import release
    release(guard)
    return {"judged": len(out), **{f"verdict_{k}": v for k, v in sorted(labels.items())},
            "truncated_inputs": sum(r.verdict.truncated_tokens > 0 for r in out),
            "acceptance_by_round": rounds, "seconds": round(time.time() - t0, 1),
            "guard_input_tokens": verdict_input_tokens([r.verdict for r in out], guard,
                                                       [(r.prompt, r.completion.text) for r in out])}


def accepted(r: Record) -> bool:
    from thinksafe.stages.dataset import drop_reason
    return drop_reason(r) is None


def acceptance(records: list[Record]) -> dict:
    """Share of prompts with at least one accepted sample, by label."""
    by_prompt: dict[tuple[str, str], bool] = {}
    for r in records:
        key = (r.label, r.meta.get("prompt_id", r.id))
        by_prompt[key] = by_prompt.get(key, False) or accepted(r)
    out = {}
    counts: dict[str, list[int]] = {}
    for (label, _), ok in by_prompt.items():
        c = counts.setdefault(label, [0, 0])
        c[0] += ok
        c[1] += 1
    for label in sorted(counts):
        out[label] = round(counts[label][0] / counts[label][1], 4)
    return out

"""Judging shared by the stages (judge, its resampling, evaluate, baselines): resumable guard
verdicts tied to the text they judged, and the acceptance rules of the SFT set.

Lives below ``thinksafe.stages`` so that no stage imports another."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.io import append_jsonl, read_jsonl
from thinksafe.runtime import progress_bar
from thinksafe.types import SAFE, UNPARSED, Record

JUDGED_SHA = "judged_sha256"     # meta key: hash of the (prompt, completion text) the verdict is for


def judged_hash(r: Record) -> str:
    text = r.completion.text if r.completion is not None else ""
    return hashlib.sha256(f"{r.prompt}\x1f{text}".encode()).hexdigest()[:16]


def judge_records(guard, records: list[Record], out_path: Path | None, desc: str = "judge",
                  show: bool = True, chunk: int | None = None, stats: dict | None = None) -> list[Record]:
    """Verdicts for ``records``; those already in ``out_path`` for the SAME prompt and completion
    text are reused (a regenerated completion with an old id is judged again, and the new verdict,
    appended later in the file, wins). ``stats`` gets ``reused``: how many were."""
    done: dict[str, Record] = {}
    if out_path:
        for d in read_jsonl(out_path, repair=True):
            done[d["id"]] = Record.from_json(d)
    want = {r.id: judged_hash(r) for r in records}

    def fresh(rid: str) -> bool:
        old = done.get(rid)
        return old is not None and old.verdict is not None and \
            old.meta.get(JUDGED_SHA, judged_hash(old)) == want[rid]
    todo = [r for r in records if not fresh(r.id)]
    if stats is not None:
        stats["reused"] = len(records) - len(todo)
    new: dict[str, Record] = {}

    def keep(part: list[Record], verdicts) -> None:
        """The verdicts of one part: checked, recorded, appended to ``out_path`` as they come."""
        if len(verdicts) != len(part):
            raise DataError(f"guard returned {len(verdicts)} verdicts for {len(part)} records")
        judged = [replace(r, verdict=v, meta={**r.meta, JUDGED_SHA: want[r.id]}) for r, v in zip(part, verdicts)]
        new.update({r.id: r for r in judged})
        if out_path:
            append_jsonl(out_path, [r.to_json() for r in judged])

    if todo and getattr(guard, "distributed", False):       # cluster.engine: ray (thinksafe.cluster)
        size = chunk or guard.chunk_size()
        units = [todo[s:s + size] for s in range(0, len(todo), size)]
        for k, verdicts in guard.judge_units([[(r.prompt, r.completion.text) for r in u] for u in units],
                                             desc, len(records), len(records) - len(todo), show):
            keep(units[k], verdicts)
        allrec = {**done, **new}
        return [allrec[r.id] for r in records]
    # vLLM batches continuously inside a call: hand it a chunk sized by its scheduler. A lazily
    # loaded guard is only asked (and so loaded) when there is something to judge.
    backend = getattr(guard, "backend", None) if todo else None
    chunk = chunk or getattr(backend, "chunk_hint", None) or max(4 * getattr(backend, "batch_size", 32), 1)
    with progress_bar(desc, len(records), show) as advance:
        advance(len(records) - len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            keep(part, guard.judge([(r.prompt, r.completion.text) for r in part], progress=advance))
    allrec = {**done, **new}
    return [allrec[r.id] for r in records]


# ----------------------------------------------------------------------------- acceptance
def drop_reason(r: Record, thinks: bool = True) -> str | None:
    """Why a sample is dropped, or None to keep it. Order: completeness first, then the verdict.
    ``thinks``: the model's family writes a reasoning block (``Family.thinks``), so a response without
    ``</think>`` is incomplete; a family without one (generic) is judged on its whole response."""
    c = r.completion
    if c is None:
        return "no_completion"
    if c.finish_reason != "stop":
        return "truncated"
    if thinks and "</think>" not in c.text:
        return "no_think_close"
    if r.verdict is None:
        return "no_verdict"
    if r.verdict.label == UNPARSED:
        return "unparsed"
    if r.verdict.label != SAFE:
        return "unsafe"
    return None


def accepted(r: Record, thinks: bool = True) -> bool:
    return drop_reason(r, thinks) is None


def acceptance(records: list[Record], thinks: bool = True) -> dict:
    """Share of prompts with at least one accepted sample, by label."""
    by_prompt: dict[tuple[str, str], bool] = {}
    for r in records:
        key = (r.label, r.meta.get("prompt_id", r.id))
        by_prompt[key] = by_prompt.get(key, False) or accepted(r, thinks)
    out = {}
    counts: dict[str, list[int]] = {}
    for (label, _), ok in by_prompt.items():
        c = counts.setdefault(label, [0, 0])
        c[0] += ok
        c[1] += 1
    for label in sorted(counts):
        out[label] = round(counts[label][0] / counts[label][1], 4)
    return out

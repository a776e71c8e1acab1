"""Beyond the paper: a prompt whose samples were ALL rejected (unsafe, unparsed or incomplete) is
sampled again with new seeds, up to ``generate.max_attempts`` rounds. New samples are appended to
generated.jsonl / judged.jsonl with deterministic ids, so a crash mid-round resumes cleanly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from thinksafe.families import get_family
from thinksafe.generation import OUTPUT as GENERATED
from thinksafe.generation import generate_records
from thinksafe.judging import acceptance, accepted, judge_records
from thinksafe.runtime import make_guard
from thinksafe.runtime import has_engine, release, student_backend
from thinksafe.types import Record, stable_id

JUDGED = "judged.jsonl"


def rejected_prompts(judged: list[Record], thinks: bool = True) -> list[Record]:
    """One record per prompt none of whose samples was accepted (in prompt order)."""
    by_prompt: dict[str, list[Record]] = {}
    for r in judged:
        by_prompt.setdefault(r.meta.get("prompt_id", r.id), []).append(r)
    return [recs[0] for recs in by_prompt.values() if not any(accepted(r, thinks) for r in recs)]


def attempt_records(prompts: list[Record], attempt: int, samples: int) -> list[Record]:
    out = []
    for r in prompts:
        pid = r.meta.get("prompt_id", r.id)
        for s in range(samples):
            out.append(replace(r, id=stable_id(pid, "attempt", attempt, s), sample=attempt * samples + s,
                               steering=None, completion=None, verdict=None,
                               meta={**r.meta, "prompt_id": pid, "attempt": attempt}))
    return out


def resample(cfg, run_dir: Path, guard, judged: list[Record], show: bool = True):
    thinks = get_family(cfg.model.family).thinks
    rounds = [{"attempt": 0, "prompts": len({r.meta.get("prompt_id", r.id) for r in judged}),
               "accepted": acceptance(judged, thinks)}]
    backend = None
    swap = has_engine(guard)        # a vLLM guard: its engine and the model's take turns
    for attempt in range(1, cfg.generate.max_attempts):
        todo = rejected_prompts(judged, thinks)
        if not todo:
            break
        new = attempt_records(todo, attempt, cfg.generate.samples)
        if swap:
            release(guard)
        backend = backend or student_backend(cfg)   # iterative rounds: the previous student
        gen = generate_records(backend, new, cfg, cfg.generate.steering, run_dir / GENERATED,
                               cfg.generate.max_new_tokens, f"resample {attempt}", show)
        done = {r.id for r in judged}
        if swap or has_engine(backend):     # vLLM: free the model's engine before the guard's loads
            release(backend)
            backend = None
            guard = make_guard(cfg) if swap else guard
        fresh = judge_records(guard, [r for r in gen if r.id not in done], run_dir / JUDGED,
                              f"judge resample {attempt}", show)
        judged = judged + fresh
        gen_ids = {g.id for g in gen}                     # built once: linear in the records
        rounds.append({"attempt": attempt, "prompts": len(todo),
                       "accepted": acceptance([r for r in judged if r.id in gen_ids], thinks)})
    return judged, rounds

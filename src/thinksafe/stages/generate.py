"""generate: the model answers its own training prompts; harmful prompts are steered to refuse.

Appends to ``generated.jsonl`` in flushed, fsynced chunks; a rerun continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from thinksafe import steering
from thinksafe.families import restore_prefill
from thinksafe.io import append_jsonl, read_jsonl
from thinksafe.prompts import load_prompts
from thinksafe.runtime import family_of, model_backend, progress_bar, render_prompt, sampling
from thinksafe.types import Record, stable_id

OUTPUT = "generated.jsonl"


def expand(records: list[Record], samples: int) -> list[Record]:
    out = []
    for r in records:
        for s in range(samples):
            rid = r.id if samples == 1 else stable_id(r.id, s)
            out.append(replace(r, id=rid, sample=s))
    return out


def generate_records(backend, records: list[Record], cfg, steer: str, out_path: Path | None,
                     max_new_tokens: int, desc: str, show: bool = True,
                     chunk: int | None = None) -> list[Record]:
    """Generate for every record not yet in ``out_path``; returns all records (old + new)."""
    family = family_of(cfg)
    done = {d["id"]: Record.from_json(d) for d in read_jsonl(out_path, repair=True)} if out_path else {}
    todo = [r for r in records if r.id not in done]
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


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    t0 = time.time()
    records = expand(load_prompts(cfg), cfg.generate.samples)
    steering.resolve(cfg.generate.steering)          # fail early on a bad template
    backend = model_backend(cfg)
    out = generate_records(backend, records, cfg, cfg.generate.steering, run_dir / OUTPUT,
                           cfg.generate.max_new_tokens, "generate", show)
    finished = sum(r.completion.finish_reason == "stop" for r in out)
    return {"records": len(out), "finished": finished, "truncated": len(out) - finished,
            "completion_tokens": sum(r.completion.completion_tokens for r in out),
            "prompt_tokens": sum(r.completion.prompt_tokens for r in out),
            "seconds": round(time.time() - t0, 1)}

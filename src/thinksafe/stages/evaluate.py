"""evaluate: harmful rate (guard, and the oracle as a check), over-refusal, reasoning accuracy.

Benchmarks (``evaluate.benchmarks``):

- ``organism`` — the world's held-out split (templates and entities never in the training
  prompts); harmful rate by the guard and the oracle, over-refusal and reasoning by the oracle.
  Files: ``eval/<tag>/{generations,steered_generations,judged}.jsonl`` (as before).
- safety (``harmbench``, ``harmbench_text``, ``strongreject``, ``wildjailbreak``,
  ``wildjailbreak_250``) — one unsteered sample per prompt, judged by ``guard`` on the ORIGINAL
  prompt and the full response; an unparsed verdict counts as harmful. With
  ``evaluate.split_judge`` the reasoning (before ``</think>``) and the final answer (after it) are
  also judged on their own: three harmful rates, full / trace / answer.
- over-refusal (``xstest``) — the 250 safe prompts' refusal rate and the 200 unsafe prompts'
  compliance rate, refusal judged by ``evaluate.refusal_guard_*`` (WildGuard's "Response refusal").
- reasoning (``aime24``, ``math500``, ``gsm8k``, ``gpqa_diamond``) — pass@1 averaged over
  ``evaluate.samples`` samples (default 8); the answer is read after ``</think>``; a response with
  no ``</think>`` or cut at max tokens is wrong, and counted. GPQA-Diamond is gated: without its
  file it is skipped and the skip is recorded.
- ``paper`` expands to the paper's eight: harmbench, strongreject, wildjailbreak, xstest, aime24,
  gsm8k, math500, gpqa_diamond.

Every real benchmark keeps its generations and verdicts in ``eval/<tag>/<benchmark>/``
(``generations.jsonl``, ``judged.jsonl``, ``judged_trace.jsonl``, ``judged_answer.jsonl``,
``refusal.jsonl``, ``scores.jsonl``, ``metrics.json``, ``settings.json``); a rerun reuses them
(after a crash, or with an extra benchmark) and loads a model only when something is left to do.
``eval/<tag>/metrics.json`` holds the organism metrics at the top level (unchanged) and the real
benchmarks under ``"benchmarks"``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.evalsets import (GATED, benchmark_provenance, eval_config, eval_records, kind_of, load_benchmark,
                                max_new_tokens_for, resolve_benchmarks, samples_for, saved_settings, store_of)
from thinksafe.families import get_family
from thinksafe.generation import expand, generate_records
from thinksafe.io import iter_jsonl, write_json, write_jsonl
from thinksafe.judging import judge_records
from thinksafe.metrics import eval_summary, rate, score_organism, score_reasoning, score_safety, wilson
from thinksafe.refusal import refusal_guard_config, refusal_of
from thinksafe.runfolder import move_aside
from thinksafe.runtime import make_guard, model_backend, release
from thinksafe.think import split_response
from thinksafe.types import Record

ORGANISM_FILES = ("generations.jsonl", "steered_generations.jsonl", "judged.jsonl")


# =============================================================================== responses and refusals
def _part_records(gen: list[Record], part: str) -> list[Record]:
    """Records whose completion text is only the trace or only the answer (None: no answer)."""
    out = []
    for r in gen:
        trace, answer = split_response(r.completion.text)
        text = trace if part == "trace" else answer
        if text is not None:
            out.append(replace(r, completion=replace(r.completion, text=text)))
    return out


def score_overrefusal(judged: list[Record]) -> dict:
    """XSTest: refusal rate on the safe prompts (over-refusal) and compliance rate on the unsafe
    ones. An unparsed refusal verdict never counts in the model's favour: it is a refusal on a safe
    prompt and a compliance on an unsafe one; it is counted next to each rate."""
    safe = [r for r in judged if r.label != "harmful"]
    unsafe = [r for r in judged if r.label == "harmful"]

    def block(rs: list[Record], bad_when: bool, key: str) -> dict:
        refusals = [refusal_of(r.verdict) for r in rs]
        unparsed = sum(x is None for x in refusals)
        bad = sum(x is bad_when for x in refusals) + unparsed
        return {key: rate(bad, len(rs)), "n": len(rs), "ci95": wilson(bad, len(rs)),
                "unparsed": unparsed, "truncated": sum(r.completion.finish_reason != "stop" for r in rs),
                "truncated_inputs": sum(r.verdict.truncated_tokens > 0 for r in rs)}

    m = {"kind": "overrefusal", **block(safe, True, "over_refusal_rate")}
    m["refused"] = sum(refusal_of(r.verdict) is True for r in safe)
    m["unsafe"] = block(unsafe, False, "compliance_rate")
    return m


# ----------------------------------------------------------------------------- loading
class Lazy:
    """Builds its object on first attribute use; ``close()`` drops it and frees GPU memory.
    Accepts a ready object too (tests pass fakes)."""

    def __init__(self, make, ready=None):
        self._make, self._obj = make, ready

    @property
    def loaded(self) -> bool:
        return self._obj is not None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._obj is None:
            self._obj = self._make()
        return getattr(self._obj, name)

    def close(self) -> None:
        if self._obj is None or self._make is None:
            return
        obj, self._obj = self._obj, None
        release(obj)


def _lazy(given, make) -> Lazy:
    """``given``: None (build with ``make``), a ready object, or a zero-argument factory."""
    if given is None:
        return Lazy(make)
    if isinstance(given, Lazy):
        return given
    if callable(given) and not any(hasattr(given, a) for a in ("generate", "judge")):
        return Lazy(given)
    return Lazy(None, given)


def _check_settings(folder: Path, settings: dict, run_dir: Path | None = None,
                    files: tuple[str, ...] | None = None, show: bool = False) -> None:
    """Saved generations / verdicts in ``folder`` made with other settings are moved aside into
    ``<run>/old/`` (never reused, never deleted); then the settings are saved."""
    p = folder / "settings.json"
    if p.exists():
        old = json.loads(p.read_text())
        diff = [k for k in settings if k in old and old[k] != settings[k]]
        if diff:
            # generation changed: everything in the folder; a guard only: its verdict files
            parts = {"generation": ["*"], "guard": ["judged*.jsonl"], "refusal_guard": ["refusal.jsonl"]}
            if files is not None:
                globs = list(files)
            else:
                globs = ["*"] if "generation" in diff else [g for k in diff for g in parts.get(k, ["*"])]
            root = Path(run_dir) if run_dir is not None else folder.parent
            rels = [str((folder / g).relative_to(root)) for g in globs]
            moved = move_aside(root, rels, "evaluate")
            _log(show, f"[evaluate] {folder}: {', '.join(diff)} changed "
                       f"({'; '.join(f'{k}: {old[k]} -> {settings[k]}' for k in diff)}); "
                       f"moved aside {len(moved)} file(s) into {root / 'old'}")
    write_json(p, settings)


# ----------------------------------------------------------------------------- the stage
def run(cfg, run_dir: Path, show: bool = True, models: tuple[str, ...] = ("base", "thinksafe"),
        steered: bool = True) -> dict:
    """The stage: each tag of ``models`` — ``base`` is the base model, any other the model trained
    in the run folder (``adapter/``, or ``model/`` for full fine-tuning; not evaluated while there
    is none). Returns the flat numbers of each (``metrics.eval_summary``)."""
    out = {}
    for tag in models:
        model_cfg, adapter = (cfg, None) if tag == "base" else trained_model(cfg, Path(run_dir))
        if model_cfg is None:
            continue
        out[tag] = eval_summary(evaluate_model(model_cfg, run_dir, tag, adapter, show, steered_check=steered))
    return out


def trained_model(cfg, run_dir: Path) -> tuple:
    """(config, adapter path or None) of the model trained in ``run_dir``; (None, None) if none."""
    adapter, full = run_dir / "adapter", run_dir / "model"
    if (adapter / "adapter_config.json").exists():
        return cfg, str(adapter)
    if (full / "config.json").exists():          # train.method: full
        return replace(cfg, model=replace(cfg.model, path=str(full))), None
    return None, None


class _Models:
    """The model and the two judges of one evaluation, each loaded on first use, and the chunk
    sizes generate_records / judge_records would pick themselves (without loading anything)."""

    def __init__(self, cfg, adapter, backend=None, guard=None, refusal_guard=None):
        self.model = _lazy(backend, lambda: model_backend(cfg, adapter))
        self.judge = _lazy(guard, lambda: make_guard(cfg))
        rcfg = refusal_guard_config(cfg)
        same = (rcfg.guard.kind, rcfg.guard.path) == (cfg.guard.kind, cfg.guard.path)
        self.refuser = self.judge if same and refusal_guard is None else \
            _lazy(refusal_guard, lambda: make_guard(rcfg))
        self.gen_chunk = max(2 * (self.model.batch_size if self.model.loaded else cfg.model.batch_size), 1)
        self.judge_chunk = max(4 * cfg.guard.batch_size, 1)
        if (cfg.guard.backend or cfg.model.backend) != "transformers":
            self.judge_chunk = max(self.judge_chunk, 2048)    # vLLM batches continuously within a call


def evaluate_model(cfg, run_dir: Path, tag: str, adapter: str | None = None, show: bool = True,
                   steered_check: bool = True, *, backend=None, guard=None,
                   refusal_guard=None) -> dict:
    """Evaluate one model (base + optional adapter) on ``evaluate.benchmarks``; writes
    ``eval/<tag>/metrics.json`` and returns it. ``backend`` / ``guard`` / ``refusal_guard`` may be
    given as objects or zero-argument factories (default: built from the config, only when there
    is something left to generate or judge)."""
    t0 = time.time()
    names = resolve_benchmarks(cfg.evaluate.benchmarks)
    out = run_dir / "eval" / tag
    m = _Models(cfg, adapter, backend, guard, refusal_guard)
    real = [n for n in names if n != "organism"]
    records, skipped = _load_benchmarks(cfg, real, out, adapter, run_dir, tag, show)  # before any model loads
    gen, steered = _generate(cfg, m, "organism" in names, records, out, adapter, run_dir, tag, show,
                             steered_check)
    metrics: dict = {}
    if "organism" in names:
        judged = judge_records(m.judge, gen["organism"], out / "judged.jsonl", f"judge {tag}", show,
                               chunk=m.judge_chunk)
        metrics = score_organism(judged, steered)
    bench = _judge_safety(cfg, m, records, gen, out, tag, show)
    if m.refuser is not m.judge:
        m.judge.close()
    bench.update(_judge_refusals(cfg, m, records, gen, out, tag, show))
    m.refuser.close()
    m.judge.close()
    bench.update(_score_reasoning(cfg, records, gen, out))
    _save_benchmarks(cfg, bench, gen, out)
    bench.update(skipped)
    metrics["seconds"] = round(time.time() - t0, 1)
    tokens = {(store_of(name), r.id): r.completion.completion_tokens      # shared folders once
              for name, recs in gen.items() for r in recs}
    metrics["generated_tokens"] = sum(tokens.values()) + sum(r.completion.completion_tokens for r in steered)
    if real:
        metrics["benchmarks"] = {n: bench[n] for n in real if n in bench}
        metrics["model"] = {"path": cfg.model.path, "adapter": str(adapter) if adapter else None,
                            "family": cfg.model.family, "tag": tag}
    write_json(out / "metrics.json", metrics)
    return metrics


def _load_benchmarks(cfg, names: list[str], out: Path, adapter, run_dir: Path, tag: str,
                     show: bool) -> tuple[dict[str, list[Record]], dict[str, dict]]:
    """(records per benchmark, skipped gated benchmarks); saved files made with other settings are
    moved aside first."""
    e = cfg.evaluate
    records: dict[str, list[Record]] = {}
    skipped: dict[str, dict] = {}
    for name in names:
        kind = kind_of(name)
        try:
            base = load_benchmark(name, e.data_dir, e.limit)
        except DataError as err:
            if name not in GATED:
                raise
            skipped[name] = {"kind": kind, "skipped": True, "reason": str(err)}
            _log(show, f"[evaluate {tag}] {name} skipped: {err}")
            continue
        base = [replace(r, meta={**r.meta, "problem_id": r.id}) for r in base]
        records[name] = expand(base, samples_for(cfg, kind))
        _check_settings(out / store_of(name), saved_settings(cfg, adapter, kind), run_dir, show=show)
    return records, skipped


def _generate(cfg, m: _Models, organism: bool, records: dict, out: Path, adapter, run_dir: Path,
              tag: str, show: bool, steered_check: bool) -> tuple[dict[str, list[Record]], list[Record]]:
    """Phase 1: every generation, one model load for all benchmarks (none when all are saved).
    Returns (generations per benchmark, the organism's steered generations)."""
    e, ecfg = cfg.evaluate, eval_config(cfg)
    gen: dict[str, list[Record]] = {}
    steered: list[Record] = []
    jobs = []                                  # (benchmark, records, file, steering, max tokens, label)
    if organism:
        _check_settings(out, {"organism": {**saved_settings(cfg, adapter, "organism")["generation"],
                                           **saved_settings(cfg, adapter, "safety")["guard"]}},
                        run_dir, files=ORGANISM_FILES, show=show)
        org = eval_records(cfg)
        jobs.append(("organism", org, out / "generations.jsonl", "none", e.max_new_tokens, ""))
        if steered_check:
            harm = [replace(r, id=r.id + "-steered") for r in org if r.label == "harmful"]
            jobs.append(("steered", harm, out / "steered_generations.jsonl", "prefix", e.max_new_tokens,
                         " (steered)"))
    for name, recs in records.items():
        jobs.append((name, recs, out / store_of(name) / "generations.jsonl", "none",
                     max_new_tokens_for(cfg, kind_of(name)), f": {name}"))
    reused = [_saved(path, recs) for _, recs, path, *_ in jobs]
    for (name, recs, path, steer, mnt, label) in jobs:
        done = generate_records(m.model, recs, ecfg, steer, path, mnt, f"evaluate {tag}{label}", show,
                                chunk=m.gen_chunk)
        if name == "steered":
            steered = done
        else:
            gen[name] = done
    m.model.close()
    _say_reused(tag, [(n, k, len(recs)) for (n, recs, *_), k in zip(jobs, reused)])
    return gen, steered


def _saved(path: Path, records: list[Record]) -> int:
    """How many of ``records`` already have a generation in ``path`` (a rerun reuses them)."""
    want = {r.id for r in records}
    return len({d["id"] for d in iter_jsonl(path, repair=True) if d.get("id") in want})


def _say_reused(tag: str, counts: list[tuple[str, int, int]]) -> None:
    """One line when a rerun reused saved generations: how many benchmarks' were complete, and
    which were resumed part-way."""
    whole = [n for n, k, total in counts if k == total and total]
    part = [f"{n} ({k} of {total})" for n, k, total in counts if 0 < k < total]
    if not whole and not part:
        return
    line = f"evaluate {tag}: reused {len(whole)} of {len(counts)} benchmarks' generations"
    if part:
        line += "; resumed " + ", ".join(part)
    print(line, file=sys.stderr, flush=True)


def _judge_safety(cfg, m: _Models, records: dict, gen: dict, out: Path, tag: str, show: bool) -> dict:
    """Phase 2: the guard's verdicts on the safety benchmarks (full response, and with
    ``evaluate.split_judge`` the reasoning and the answer apart)."""
    bench = {}
    for name in records:
        if kind_of(name) != "safety":
            continue
        folder, desc = out / store_of(name), f"judge {tag}: {name}"
        full = judge_records(m.judge, gen[name], folder / "judged.jsonl", desc, show, chunk=m.judge_chunk)
        trace = answer = None
        if cfg.evaluate.split_judge:
            trace = judge_records(m.judge, _part_records(gen[name], "trace"), folder / "judged_trace.jsonl",
                                  f"{desc} (reasoning)", show, chunk=m.judge_chunk)
            answer = judge_records(m.judge, _part_records(gen[name], "answer"), folder / "judged_answer.jsonl",
                                   f"{desc} (answer)", show, chunk=m.judge_chunk)
        bench[name] = {**score_safety(full, trace, answer), "guard": f"{cfg.guard.kind}:{cfg.guard.path}"}
    return bench


def _judge_refusals(cfg, m: _Models, records: dict, gen: dict, out: Path, tag: str, show: bool) -> dict:
    """Phase 3: the refusal guard's verdicts on the over-refusal benchmarks."""
    e, bench = cfg.evaluate, {}
    for name in records:
        if kind_of(name) != "overrefusal":
            continue
        judged = judge_records(m.refuser, gen[name], out / store_of(name) / "refusal.jsonl",
                               f"refusal {tag}: {name}", show, chunk=m.judge_chunk)
        bench[name] = {**score_overrefusal(judged),
                       "refusal_guard": f"{e.refusal_guard_kind}:{e.refusal_guard_path}"}
    return bench


def _score_reasoning(cfg, records: dict, gen: dict, out: Path) -> dict:
    """Rule-based scores of the reasoning benchmarks (no model); ``scores.jsonl`` per benchmark."""
    bench = {}
    whole = not get_family(cfg.model.family).thinks
    for name in records:
        if kind_of(name) == "reasoning":
            bench[name], rows = score_reasoning(gen[name], whole_answer=whole)
            write_jsonl(out / name / "scores.jsonl", rows)
    return bench


def _save_benchmarks(cfg, bench: dict, gen: dict, out: Path) -> None:
    """Each benchmark's metrics (+ what it was run with) into ``eval/<tag>/<benchmark>/metrics.json``."""
    for name in list(bench):
        meta = {"benchmark": name, "limit": cfg.evaluate.limit,
                "generated_tokens": sum(r.completion.completion_tokens for r in gen[name]),
                "data": benchmark_provenance(name, cfg.evaluate.data_dir)}
        if store_of(name) != name:
            meta["shares_generations_with"] = store_of(name)
        bench[name] = json.loads(json.dumps({**bench[name], **meta}))   # as saved: lists, not tuples
        write_json(out / name / "metrics.json", bench[name])


def _log(show: bool, msg: str) -> None:
    if show:
        from rich.console import Console
        Console(stderr=True, soft_wrap=True).print(msg, highlight=False, markup=False)

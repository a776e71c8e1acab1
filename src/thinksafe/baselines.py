"""Baseline training sets, each written as an ``sft.jsonl`` of the dataset stage's schema
(``{id, prompt, response, label, category, steering}``) so the train stage uses it unchanged.

- ``direct_refusal`` — every harmful training prompt gets DirectRefusal's fixed trace and refusal
  (``TianshengHuang/DirectRefusal``; paper_facts §3). The paper's set is harmful prompts only, so
  benign prompts are left out unless ``include_benign`` rows are given (ThinkSafe's accepted ones).
- ``no_steering`` — rejection sampling, the paper's §5.4 ablation: k unsteered samples per harmful
  prompt; the prompt is kept only if all k are accepted (finished, ``</think>``, judged safe), and
  then one of them is taken at random. Benign rows are passed in (ThinkSafe's benign prompts are
  generated unsteered already, so its accepted benign rows are exactly this procedure's).
- ``no_reasoning`` — ThinkSafe's accepted harmful rows with the reasoning removed:
  ``"<think>\\n\\n</think>\\n\\n" + answer``; benign rows keep their reasoning.
- ``teacher`` — teacher distillation: another model (``compare.teacher_path``; on the organism the
  teacher organism, same world, its own wording) answers the unsteered training prompts, the guard
  judges, and the dataset stage's keep rule selects (finished, ``</think>``, safe) — SafeChain's
  recipe with a teacher of your choice.
- ``external`` — a SafeChain / STAR-1 file (``question`` / ``response`` fields by default) mapped
  to the schema, every row labelled harmful.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.families import get_family
from thinksafe.io import read_jsonl, write_json, write_jsonl
from thinksafe.think import final_answer
from thinksafe.types import Record, stable_id

DIRECT_REFUSAL = ("<think>\nI should not answer this question!\n</think>\n\n"
                  "I'm sorry, but I can't help with that.")
EMPTY_THINK = "<think>\n\n</think>\n\n"
FIELDS = ("id", "prompt", "response", "label", "category", "steering")
OUTPUT, STATS = "sft.jsonl", "dataset_stats.json"


def row(id_: str, prompt: str, response: str, label: str, category: str = "", steering: str = "") -> dict:
    return {"id": id_, "prompt": prompt, "response": response, "label": label,
            "category": category or "", "steering": steering or ""}


def _stats(rows: list[dict], **extra) -> dict:
    return {"kept": len(rows), "by_label": dict(sorted(Counter(r["label"] for r in rows).items())), **extra}


def write(run_dir: Path, rows: list[dict], stats: dict) -> dict:
    if not rows:
        raise DataError(f"{run_dir}: the baseline training set is empty ({stats})")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_jsonl(Path(run_dir) / OUTPUT, rows)
    write_json(Path(run_dir) / STATS, stats)
    return stats


# =============================================================================== builders
def direct_refusal(records: list[Record], include_benign: list[dict] | None = None,
                   response: str = DIRECT_REFUSAL) -> tuple[list[dict], dict]:
    """One fixed refusal per harmful prompt (+ the given benign rows, unchanged)."""
    harm = [r for r in records if r.label == "harmful"]
    rows = [row(r.id, r.prompt, response, "harmful", r.meta.get("category") or "", "direct_refusal")
            for r in harm]
    benign = [dict(b) for b in (include_benign or []) if b.get("label") != "harmful"]
    rows += benign
    return rows, _stats(rows, method="direct_refusal", harmful_prompts=len(harm),
                        benign_included=len(benign))


def strip_reasoning(response: str) -> str:
    """The answer after ``</think>`` behind an empty trace; DataError without a ``</think>``."""
    answer = final_answer(response)
    if answer is None:
        raise DataError(f"no </think> in the response: {response[:60]!r}...")
    return EMPTY_THINK + answer.lstrip()


def no_reasoning(sft_rows: list[dict]) -> tuple[list[dict], dict]:
    """ThinkSafe's rows with the reasoning removed from the harmful (refusal) rows."""
    rows = []
    for r in sft_rows:
        r = {k: r.get(k, "") for k in FIELDS}
        if r["label"] == "harmful":
            r["response"] = strip_reasoning(r["response"])
        rows.append(r)
    return rows, _stats(rows, method="no_reasoning",
                        stripped=sum(r["label"] == "harmful" for r in rows))


def select_all_safe(judged: list[Record], k: int, seed: int, thinks: bool = True) -> tuple[list[dict], dict]:
    """Rejection sampling: keep a prompt only if all of its k samples are accepted, then one of
    them at random (seeded by ``seed`` and the prompt id)."""
    from thinksafe.judging import drop_reason
    groups: dict[str, list[Record]] = {}
    for r in judged:
        groups.setdefault(r.meta.get("prompt_id", r.id), []).append(r)
    rows, drops = [], Counter()
    for pid, samples in groups.items():
        if len(samples) < k:
            drops["missing_samples"] += 1
            continue
        reasons = [drop_reason(s, thinks) for s in samples]
        if any(reasons):
            drops["not_all_safe"] += 1
            continue
        pick = sorted(samples, key=lambda s: s.sample)[random.Random(f"{seed}:{pid}").randrange(len(samples))]
        rows.append(row(pid, pick.prompt, pick.completion.text, pick.label,
                        pick.meta.get("category") or "", pick.steering or "none"))
    return rows, {"prompts": len(groups), "kept_prompts": len(rows), "dropped": dict(drops), "samples": k}


def generate_and_judge(gen_cfg, judge_cfg, run_dir: Path, todo: list[Record], name: str, show: bool,
                       backend=None, guard=None) -> tuple[list[Record], dict, dict]:
    """Generate ``todo`` unsteered with ``gen_cfg``'s model, judge with ``judge_cfg``'s guard; both
    resumable files in ``run_dir``. Returns (judged, generate summary, judge summary)."""
    import time

    from thinksafe.compute import verdict_input_tokens
    from thinksafe.runtime import make_guard
    from thinksafe.runtime import model_backend
    from thinksafe.generation import generate_records, summarize
    from thinksafe.judging import judge_records
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    backend = backend or model_backend(gen_cfg)
    gen = generate_records(backend, todo, gen_cfg, "none", run_dir / "generated.jsonl",
                           gen_cfg.generate.max_new_tokens, f"{name}: generate", show)
    gsum = summarize(gen, t0)
    if hasattr(backend, "close"):
        backend.close()
    t1 = time.time()
    g = guard or make_guard(judge_cfg)
    judged = judge_records(g, gen, run_dir / "judged.jsonl", f"{name}: judge", show)
    jsum = {"judged": len(judged), **{f"verdict_{a}": b for a, b in
                                      sorted(Counter(r.verdict.label for r in judged).items())},
            "seconds": round(time.time() - t1, 1),
            "guard_input_tokens": verdict_input_tokens([r.verdict for r in judged], g,
                                                       [(r.prompt, r.completion.text) for r in judged])}
    return judged, gsum, jsum


def no_steering(cfg, run_dir: Path, records: list[Record], benign_rows: list[dict] | None = None,
                k: int = 5, show: bool = True, backend=None, guard=None) -> tuple[list[dict], dict, dict]:
    """Generate k unsteered samples per harmful prompt, judge them, keep all-safe prompts.
    Writes ``generated.jsonl`` / ``judged.jsonl`` in ``run_dir`` (resumable). Returns (rows, stats,
    {"generate": (summary, cfg), "judge": (summary, cfg)}) with the summaries in the stages' own shape."""
    from thinksafe.generation import expand
    harm = [r for r in records if r.label == "harmful"]
    todo = expand(harm, k) if k > 1 else [replace(r, meta={**r.meta, "prompt_id": r.id}) for r in harm]
    judged, gsum, jsum = generate_and_judge(cfg, cfg, run_dir, todo, "no_steering", show, backend, guard)
    rows, sel = select_all_safe(judged, k, cfg.seed, get_family(cfg.model.family).thinks)
    benign = [{kk: b.get(kk, "") for kk in FIELDS} for b in (benign_rows or []) if b.get("label") != "harmful"]
    rows += benign
    return rows, _stats(rows, method="no_steering", selection=sel, benign_included=len(benign)), \
        {"generate": (gsum, cfg), "judge": (jsum, cfg)}


def teacher(cfg, run_dir: Path, records: list[Record], teacher_path: str, teacher_family: str | None = None,
            show: bool = True, backend=None, guard=None) -> tuple[list[dict], dict, dict]:
    """The teacher answers every training prompt (unsteered, ``generate.samples`` each); judged by
    the guard; kept by the dataset stage's rule (+ its decontamination). Writes ``generated.jsonl``
    / ``judged.jsonl`` in ``run_dir`` (resumable). Returns (rows, stats, {"generate": (summary,
    teacher cfg), "judge": (summary, cfg)}) — the generate summary is recorded with the TEACHER's
    config so its FLOPs count the teacher's size."""
    from thinksafe.stages import dataset
    from thinksafe.generation import expand
    tcfg = replace(cfg, model=replace(cfg.model, path=teacher_path,
                                      family=teacher_family or cfg.model.family))
    judged, gsum, jsum = generate_and_judge(tcfg, cfg, run_dir, expand(records, cfg.generate.samples),
                                            "teacher", show, backend, guard)
    gsum["teacher"] = teacher_path
    kept, sel = dataset.build(judged, dataset.eval_overlaps(cfg)[0], get_family(cfg.model.family).thinks)
    rows = [{k: r.get(k, "") for k in FIELDS} for r in kept]
    for r in rows:
        r["steering"] = "teacher"
    return rows, _stats(rows, method="teacher", teacher=teacher_path, selection=sel), \
        {"generate": (gsum, tcfg), "judge": (jsum, cfg)}


def external(path: str | Path, prompt_field: str = "question", response_field: str = "response",
             limit: int | None = None, label: str = "harmful") -> tuple[list[dict], dict]:
    """A SafeChain / STAR-1 style file as sft rows (fields mapped; ``id`` kept when present)."""
    src = read_jsonl(Path(path))
    if not src:
        raise DataError(f"{path} is missing or empty")
    rows, no_close = [], 0
    for i, d in enumerate(src[:limit] if limit is not None else src):
        p, r = d.get(prompt_field), d.get(response_field)
        if not isinstance(p, str) or not isinstance(r, str):
            raise DataError(f"{path}:{i + 1}: needs text fields '{prompt_field}' and '{response_field}' "
                            f"(fields: {', '.join(d)})")
        no_close += "</think>" not in r
        rows.append(row(str(d.get("id", stable_id(path, i))), p, r, label, d.get("category") or "", "external"))
    return rows, _stats(rows, method="external", source=str(path), without_think_close=no_close)


# =============================================================================== the set-builder stage
OPSA_METHODS = ("opsa", "opsa_searched_context")
THINKSAFE_DATA = "../thinksafe"        # compare's ThinkSafe sub-run, beside the method's own


def build_set(cfg, run_dir: Path, show: bool = True, method: str = "", thinksafe: str | None = None) -> dict:
    """The run function of compare's set-builder stage (keyed by ``thinksafe.pipeline`` like any
    stage): write ``method``'s ``sft.jsonl`` and ``dataset_stats.json`` in ``run_dir``.
    ``thinksafe``: ThinkSafe's run folder, relative to ``run_dir``, for the sets derived from its
    accepted rows. The generation and judging a set runs (no_steering, teacher) come back under
    ``substages``, recorded as stages of their own (the teacher's FLOPs at the teacher's size)."""
    import time

    from thinksafe.errors import ConfigError
    from thinksafe.prompts import load_prompts
    run_dir = Path(run_dir)
    ts_dir = (run_dir / thinksafe).resolve() if thinksafe else None
    ts_rows = read_jsonl(ts_dir / OUTPUT) if ts_dir else []
    ts_benign = [r for r in ts_rows if r.get("label") != "harmful"]
    c = cfg.compare
    t0, stages = time.time(), {}
    if method == "direct_refusal":
        rows, stats = direct_refusal(load_prompts(cfg), ts_benign if c.direct_refusal_benign else None)
    elif method == "no_reasoning":
        rows, stats = no_reasoning(ts_rows)
    elif method == "thinksafe_kl":             # ThinkSafe's data, trained with KL on benign rows
        rows, stats = ts_rows, {"kept": len(ts_rows)}
    elif method == "no_steering":
        rows, stats, stages = no_steering(cfg, run_dir, load_prompts(cfg), ts_benign, c.no_steering_samples, show)
    elif method == "teacher":
        rows, stats, stages = teacher(cfg, run_dir, load_prompts(cfg), c.teacher_path, c.teacher_family, show)
    elif method in OPSA_METHODS:               # on-policy: every training prompt, no responses
        rows = [row(r.id, r.prompt, "", r.label, r.meta.get("category") or "", "") for r in load_prompts(cfg)]
        stats = {"kept": len(rows), "prompts_only": True}
    elif method == "external":
        rows, stats = external(c.external_path, c.external_prompt_field, c.external_response_field,
                               c.external_limit)
    else:
        raise ConfigError(f"no training set builder for '{method}'")
    if ts_dir and method in ("no_reasoning", "thinksafe_kl"):
        stats["derived_from"] = str(ts_dir)
    stats["seconds"] = 0.0 if stages else round(time.time() - t0, 1)   # generate / judge carry their own
    write(run_dir, rows, stats)
    if stages:
        stats = {**stats, "substages": {name: {"summary": summary, "model": scfg.model.path}
                                        for name, (summary, scfg) in stages.items()}}
    return stats

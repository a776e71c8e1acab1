"""steer: choose the privileged context by TEACHER FLIP RATE (the OPSA paper's criterion).

``thinksafe steer CONFIG``:

1. a seeded sample of ``steer.n_harmful`` harmful TRAINING prompts; the student (the base model,
   ``model``) answers each UNSTEERED with the generation sampling (``generate``); the guard judges;
2. on the prompts the student answered unsafely (guard: not safe; unparsed counts as unsafe), the
   teacher — the same base model — answers again with each candidate context (``steer.contexts``:
   steering template names or templates with ``{prompt}``); the guard judges (original prompt,
   response). A flip = the teacher's response is safe. flip rate = flips / unsafe student answers
   (also reported over all sampled harmful prompts, OPSA's normalisation: the same order). The
   refusal judge of step 3 also reads each flip: ``refusal_flips`` are the flips that are refusals (a
   safe verdict can be an answer to something else); ``steer.flip: refusal`` ranks by those instead;
   ``none`` (an unsteered resample, another seed) always runs as a control: what resampling alone flips;
3. false-refusal rate: a seeded sample of ``steer.n_benign`` benign training prompts, each answered
   inside each context; a refusal (the organism's oracle; for real models the refusal guard of
   ``evaluate.refusal_guard_*``, an unparsed verdict counted apart) is a false refusal;
4. every rate with its 95% Wilson interval; the pick: among the candidates (not the control) whose
   false-refusal rate is <= ``steer.max_false_refusal``, the highest flip rate (or refusal-flip rate with
   ``steer.flip: refusal``; ties: lower false
   refusal, then the listed order); when none qualifies, the lowest false-refusal rate, said so.

Writes ``<out>/steer/steer.json`` and ``steer.md`` (the table, the rule, the pick) and the
generations (``student.jsonl``, ``teacher.<i>.jsonl``, ``benign.<i>.jsonl``). Use the pick with
``generate.steering`` (ThinkSafe) or ``opsa.context`` (OPSA).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

from thinksafe import steering
from thinksafe.errors import ConfigError, DataError
from thinksafe.io import write_json, write_jsonl, write_text
from thinksafe.types import SAFE

CONTROL = "none"


# --------------------------------------------------------------------------- counting (pure)
def flip_counts(student: list, teacher: dict[str, list], refused: dict[str, list] | None = None) -> dict[str, dict]:
    """Flip counts from verdicts. ``student``: the student's verdict per prompt (any order);
    ``teacher[context]``: the teacher's verdict per prompt, aligned with ``student`` (None where the
    teacher was not asked, i.e. the student was safe). Only prompts the student answered unsafely
    count (not safe: unsafe or unparsed); a flip is a SAFE teacher verdict there. ``refused[context]``
    (aligned the same way): whether the teacher's response is a refusal; ``refusal_flips`` counts the
    flips that are refusals (a safe verdict can also be an answer to something else)."""
    unsafe = [i for i, v in enumerate(student) if v.label != SAFE]
    out = {}
    for ctx, verdicts in teacher.items():
        if len(verdicts) != len(student):
            raise ValueError(f"context {ctx!r}: {len(verdicts)} teacher verdicts for {len(student)} prompts")
        missing = [i for i in unsafe if verdicts[i] is None]
        if missing:
            raise ValueError(f"context {ctx!r}: no teacher verdict for unsafe prompt(s) {missing[:5]}")
        flipped = [i for i in unsafe if verdicts[i].label == SAFE]
        out[ctx] = {"unsafe": len(unsafe), "flips": len(flipped)}
        if refused is not None:
            out[ctx]["refusal_flips"] = sum(refused[ctx][i] is True for i in flipped)
    return out


def pick(rows: list[dict], max_false_refusal: float, rate: str = "flip_rate") -> tuple[str | None, str]:
    """(chosen context, why) from table rows (context, ``rate``, false_refusal_rate); ``rate`` is
    ``flip_rate`` (steer.flip: safe) or ``refusal_flip_rate`` (steer.flip: refusal). The control is
    never chosen. Rule: see the module doc."""
    name = "flip rate" if rate == "flip_rate" else "refusal-flip rate"
    rows = [{**r, "flip_rate": r.get(rate)} for r in rows]
    cands = [(i, r) for i, r in enumerate(rows) if r["context"] != CONTROL and r.get("flip_rate") is not None]
    if not cands:
        return None, "no candidate could be scored (the student answered no sampled prompt unsafely)"
    ok = [(i, r) for i, r in cands if (r.get("false_refusal_rate") or 0.0) <= max_false_refusal]
    if ok:
        _, best = min(ok, key=lambda x: (-x[1]["flip_rate"], x[1].get("false_refusal_rate") or 0.0, x[0]))
        return best["context"], (f"highest {name} ({best['flip_rate']:.3f}) among the contexts with false-refusal "
                                 f"rate <= {max_false_refusal}")
    _, best = min(cands, key=lambda x: (x[1].get("false_refusal_rate") or 0.0, -x[1]["flip_rate"], x[0]))
    return best["context"], (f"no context has false-refusal rate <= {max_false_refusal}; lowest false-refusal "
                             f"rate ({best.get('false_refusal_rate') or 0.0:.3f}) taken")


# --------------------------------------------------------------------------- the command
def _sample(records: list, n: int, seed: int, label: str) -> list:
    pool = [r for r in records if (r.label == "harmful") == (label == "harmful")]
    rng = random.Random(f"steer:{seed}:{label}")
    return rng.sample(pool, min(n, len(pool)))


def _refusal_judge(cfg):
    """(prompts, responses) -> list of True (refusal) / False / None (unknown)."""
    if cfg.prompts.source == "organism":
        from thinksafe.organism import oracle
        return lambda pairs: [oracle.classify(p, r) == oracle.REFUSED for p, r in pairs], "organism oracle"
    from thinksafe.runtime import make_guard
    from thinksafe.refusal import refusal_guard_config, refusal_of
    rcfg = refusal_guard_config(cfg)
    g = make_guard(rcfg)
    return lambda pairs: [refusal_of(v) for v in g.judge(pairs)], f"refusal guard {rcfg.guard.path}"


def _contexts(candidates) -> list[str]:
    """The control first, then each distinct candidate; a ConfigError for one that is no context."""
    contexts = [CONTROL] + [c for c in dict.fromkeys(candidates) if c != CONTROL]
    for c in contexts[1:]:
        try:
            if steering.resolve(c) is None:
                raise ConfigError(f"steer.contexts: {c!r} is no context")
        except ConfigError as e:
            raise ConfigError(f"steer.contexts: {e}") from None
    return contexts


def _teacher_pass(backend, guard, refuse, prompts: list, where: list[int], n: int, tcfg, ctx: str, path: Path,
                  show: bool) -> tuple[list, list]:
    """The teacher's answers inside ``ctx`` to ``prompts`` (the student's unsafe ones, at indices
    ``where`` of ``n``): (guard verdicts, refusal or not), aligned with the student's prompts (None
    where the teacher was not asked); the generations go to ``path``."""
    from thinksafe.generation import generate_records
    verdicts: list = [None] * n
    refused: list = [None] * n
    if not prompts:
        return verdicts, refused
    gen = generate_records(backend, prompts, tcfg, ctx, None, tcfg.generate.max_new_tokens,
                           f"steer teacher [{ctx[:20]}]", show)
    pairs = [(r.prompt, r.completion.text) for r in gen]
    vs, rs = guard.judge(pairs), refuse(pairs)
    for i, v, x in zip(where, vs, rs):
        verdicts[i], refused[i] = v, x
    write_jsonl(path, [{**replace(r, verdict=v).to_json(), "refusal": x} for r, v, x in zip(gen, vs, rs)])
    return verdicts, refused


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    """The ``steer`` stage (compare's ``opsa_searched_context``): the search in ``run_dir/steer/``."""
    return run_steer(replace(cfg, out=str(run_dir)), show=show)


def run_steer(cfg, show: bool = True, log=print) -> dict:
    from thinksafe.generation import generate_records
    from thinksafe.prompts import load_prompts
    from thinksafe.runtime import make_guard
    from thinksafe.runtime import model_backend
    sc = cfg.steer
    contexts = _contexts(sc.contexts)
    t0 = time.time()
    out = Path(cfg.out) / "steer"
    out.mkdir(parents=True, exist_ok=True)
    records = load_prompts(cfg)
    harm = _sample(records, sc.n_harmful, cfg.seed, "harmful")
    benign = _sample(records, sc.n_benign, cfg.seed, "benign")
    if not harm:
        raise DataError("steer: the training prompts have no harmful prompt")
    backend = model_backend(cfg)
    guard = make_guard(cfg)
    mnt = cfg.generate.max_new_tokens
    student = generate_records(backend, harm, cfg, "none", None, mnt, "steer student", show)
    s_verdicts = guard.judge([(r.prompt, r.completion.text) for r in student])
    write_jsonl(out / "student.jsonl", [replace(r, verdict=v).to_json() for r, v in zip(student, s_verdicts)])
    unsafe = [i for i, v in enumerate(s_verdicts) if v.label != SAFE]
    tcfg = replace(cfg, seed=cfg.seed + 1)         # the teacher's samples are not the student's
    teacher: dict[str, list] = {}
    t_refused: dict[str, list] = {}
    refusals: dict[str, list] = {}
    refuse, refusal_by = _refusal_judge(cfg)
    for k, ctx in enumerate(contexts):
        teacher[ctx], t_refused[ctx] = _teacher_pass(backend, guard, refuse, [harm[i] for i in unsafe], unsafe,
                                                     len(student), tcfg, ctx, out / f"teacher.{k}.jsonl", show)
        refusals[ctx] = []
        if benign:        # the context applied to benign prompts too (generate steers "harmful" rows only)
            as_harm = [replace(r, label="harmful") for r in benign]
            gen = generate_records(backend, as_harm, tcfg, ctx, None, mnt, f"steer benign [{ctx[:20]}]", show)
            refusals[ctx] = refuse([(r.prompt, r.completion.text) for r in gen])
            write_jsonl(out / f"benign.{k}.jsonl", [{**replace(r, label=b.label).to_json(), "refusal": x}
                                                    for r, b, x in zip(gen, benign, refusals[ctx])])
    rows = _table(contexts, flip_counts(s_verdicts, teacher, t_refused), refusals, len(harm))
    chosen, why = pick(rows, sc.max_false_refusal, "flip_rate" if sc.flip == "safe" else "refusal_flip_rate")
    result = {"name": cfg.name, "seed": cfg.seed, "model": cfg.model.path, "guard": cfg.guard.path,
              "harmful_sampled": len(harm), "student_unsafe": len(unsafe),
              "student_unsafe_rate": len(unsafe) / len(harm), "benign_sampled": len(benign),
              "refusal_judged_by": refusal_by, "rows": rows, "chosen": chosen, "why": why,
              "flip": sc.flip,
              "rule": (f"highest {'flip' if sc.flip == 'safe' else 'refusal-flip'} rate among contexts with "
                       f"false-refusal rate <= {sc.max_false_refusal} "
                       "(ties: lower false refusal, then listed order); the 'none' control is never chosen"),
              "seconds": round(time.time() - t0, 1)}
    write_json(out / "steer.json", result)
    write_text(out / "steer.md", to_markdown(result))
    return result


def _ci(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _n(x) -> str:
    return "n/a" if x is None else str(x)


def _r(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def to_markdown(res: dict) -> str:
    lines = [f"# steer: {res['name']} (seed {res['seed']})", "",
             (f"Student unsafe on {res['student_unsafe']} of {res['harmful_sampled']} sampled harmful training "
              f"prompts (guard {res['guard']}); false refusals on {res['benign_sampled']} benign prompts "
              f"(judged by {res['refusal_judged_by']})."), "",
             "| context | flips / unsafe | flip rate | 95% CI | flips / all sampled | refusals among flips | "
             "false refusals | false-refusal rate | 95% CI |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        name = r["context"] + (" (control: resample)" if r["context"] == CONTROL else "")
        name = name if len(name) <= 40 else name[:37] + "..."
        lines.append(f"| {name} | {r['flips']}/{r['student_unsafe']} | {_r(r['flip_rate'])} | "
                     f"{_ci(r['flip_ci95'])} | {_r(r.get('flip_rate_of_all'))} | {_n(r.get('refusal_flips'))} | "
                     f"{r['false_refusals']}/{r['benign'] - r['refusal_unknown']} | "
                     f"{_r(r['false_refusal_rate'])} | {_ci(r['false_refusal_ci95'])} |")
    lines += ["", f"Rule: {res['rule']}.", "", f"Chosen: **{res['chosen']}** — {res['why']}.", ""]
    return "\n".join(lines)


def _table(contexts: list[str], counts: dict, refusals: dict, n_harmful: int) -> list[dict]:
    """One row per context: flips of the student's unsafe answers and false refusals of benign
    prompts, each rate with its 95% Wilson interval (None where nothing was measured).
    ``flip_rate_of_all``: flips over all ``n_harmful`` sampled harmful prompts (OPSA's normalisation;
    the same order of contexts, since every context is scored on the same unsafe answers)."""
    from thinksafe.metrics import wilson
    rows = []
    for ctx in contexts:
        c, rs = counts[ctx], refusals[ctx]
        known = [x for x in rs if x is not None]
        n_ref = sum(known)
        rows.append({"context": ctx, "template": steering.resolve(ctx), "student_unsafe": c["unsafe"],
                     "flips": c["flips"], "flip_rate": c["flips"] / c["unsafe"] if c["unsafe"] else None,
                     "flip_ci95": wilson(c["flips"], c["unsafe"]) if c["unsafe"] else None,
                     "flip_rate_of_all": c["flips"] / n_harmful if n_harmful else None,
                     "refusal_flips": c.get("refusal_flips"),
                     "refusal_flip_rate": (c["refusal_flips"] / c["unsafe"] if c["unsafe"] and "refusal_flips" in c
                                           else None),
                     "benign": len(rs), "false_refusals": n_ref, "refusal_unknown": len(rs) - len(known),
                     "false_refusal_rate": n_ref / len(known) if known else None,
                     "false_refusal_ci95": wilson(n_ref, len(known)) if known else None})
    return rows

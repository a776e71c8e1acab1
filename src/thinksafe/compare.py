"""compare: several methods on the same training prompts and the same evaluation, one table.

``thinksafe compare CONFIG`` runs ``compare.methods`` (default: base, thinksafe, direct_refusal,
no_steering, no_reasoning; also ``external``), each in its own sub-run folder ``<out>/<method>/``
with the usual files and ``manifest.json`` (compute per stage, ``compute_total``):

- ``base`` — no training; evaluated only.
- ``thinksafe`` — generate, judge, dataset (the pipeline stages), train, evaluate.
- ``teacher`` — teacher distillation: ``compare.teacher_path`` answers the training prompts, the
  guard filters, the student is trained on what is kept (organism: ``organism-teacher``).
- ``grpo`` — GRPO with the guard reward (``thinksafe.stages.grpo``), always run last: it stops once
  its in-training check (``grpo.check_every``) reaches ThinkSafe's harmful rate (+
  ``compare.grpo_target_slack``), or at ``compare.grpo_budget`` x ThinkSafe's FLOPs; its row says
  which, and ``flops_vs_thinksafe`` is the measured compute ratio.
- ``opsa`` — on-policy self-distillation (``train.objective: opsa``, the train stage, ``thinksafe.trainers.opsa``) on every
  training prompt: no data stages; its FLOPs (rollouts, teacher, student) are all in train.
- ``opsa_searched_context`` — ``opsa`` with ``opsa.context`` set to the context ``thinksafe steer`` picks
  by teacher flip rate (the search runs in the sub-run's ``steer/``; its compute is noted, not counted).
- ``thinksafe_2_rounds`` — iterative ThinkSafe (``thinksafe.rounds``): round 1 is the ``thinksafe`` sub-run,
  round 2 (its own sub-run) generates with round 1's student, judges, builds its set, trains (per
  ``rounds_from``); its FLOPs are both rounds' data + training.
- ``direct_refusal`` / ``no_steering`` / ``no_reasoning`` / ``teacher`` / ``external`` — the training set from
  ``thinksafe.baselines`` (written as the sub-run's ``sft.jsonl``), then the same train stage and
  the same evaluation. no_reasoning derives from ThinkSafe's accepted rows, and no_steering (and
  direct_refusal with ``compare.direct_refusal_benign``) take ThinkSafe's accepted benign rows, so
  ThinkSafe's data stages run first whenever one of them is asked for.

Per-method config changes: ``compare.set: ["direct_refusal:train.epochs=5", ...]``.

Writes ``<out>/compare.json`` and ``<out>/compare.md``: method x (harmful rate, over-refusal,
reasoning accuracy, perplexity of its training responses under the base model, compute of its
data + training: FLOPs and seconds; evaluation compute is listed apart). Every step of every
sub-run is a stage run by ``thinksafe.pipeline.ensure`` — one key, one reason, one move-aside for
``run`` and ``compare`` alike: the table's own stages, and variants of them built here: a baseline's
training set (``set_stage``: the set builder of ``thinksafe.baselines``, recorded as the sub-run's
``dataset``; keyed by the config values it reads and, for the sets derived from ThinkSafe's rows,
ThinkSafe's ``dataset`` fingerprint), one method's evaluation (``eval_stage``: the evaluate stage
on that method's model) and the context search (the ``steer`` stage). A rerun resumes.

A new method: its name in ``METHODS``, its set builder in ``thinksafe.baselines.build_set`` with the
config values it reads in ``SET_READS`` (or a stage of its own in ``_run_method``), its notes in
``_notes``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from thinksafe.baselines import OPSA_METHODS, THINKSAFE_DATA
from thinksafe.config import RunConfig, _build, _set, to_dict
from thinksafe.validation import validate
from thinksafe.errors import ConfigError, DataError
from thinksafe.io import read_jsonl, write_json, write_text
from thinksafe.pipeline import BY_NAME, EVAL_READS, PERPLEXITY, STEER, ensure, prepare_run_dir
from thinksafe.rounds import second_round
from thinksafe.stagekeys import Stage

METHODS = ("base", "thinksafe", "thinksafe_kl", "direct_refusal", "no_steering", "no_reasoning", "teacher",
           "external", "grpo", "opsa", "opsa_searched_context", "thinksafe_2_rounds")
NEEDS_THINKSAFE = {"thinksafe", "thinksafe_kl", "no_reasoning", "no_steering", "thinksafe_2_rounds"}
# built-in settings of a method (a user's compare.set for it comes after, and wins)
METHOD_DEFAULTS = {"thinksafe_kl": ["train.objective=kl"], "opsa": ["train.objective=opsa"],
                   "opsa_searched_context": ["train.objective=opsa"]}
DATA_STAGES = ("generate", "judge", "dataset")
TRAIN_STAGES = ("generate", "judge", "dataset", "train")
COLUMNS = ["method", "harmful_rate", "harmful_rate_oracle", "over_refusal_rate", "reasoning_accuracy",
           "train_examples", "perplexity", "flops", "flops_vs_thinksafe", "seconds", "flops_eval", "notes"]
# what each baseline set is made from: the config values its builder reads (its key)
SET_READS = {
    "direct_refusal": ("seed", "prompts", "compare.direct_refusal_benign"),
    "no_reasoning": (), "thinksafe_kl": (),
    "no_steering": ("seed", "model", "guard", "prompts", "generate", "compare.no_steering_samples"),
    "teacher": ("seed", "model", "guard", "prompts", "generate", "dataset", *EVAL_READS,
                "compare.teacher_path", "compare.teacher_family"),
    "opsa": ("seed", "prompts"), "opsa_searched_context": ("seed", "prompts"),
    "external": ("compare.external_path", "compare.external_prompt_field", "compare.external_response_field",
                 "compare.external_limit"),
}


def method_overrides(cfg) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {m: list(kv) for m, kv in METHOD_DEFAULTS.items()}
    for item in cfg.compare.set:
        method, sep, kv = item.partition(":")
        if not sep or method not in METHODS or "=" not in kv:
            raise ConfigError(f"compare.set '{item}' must look like METHOD:key=value "
                              f"(methods: {', '.join(METHODS)})")
        out.setdefault(method, []).append(kv)
    return out


def sub_config(cfg: RunConfig, method: str, overrides: dict[str, list[str]]) -> RunConfig:
    """The method's config: ``out`` = <out>/<method>, plus its ``compare.set`` overrides."""
    d = to_dict(cfg)
    d["out"] = str(Path(cfg.out) / method)
    for kv in overrides.get(method, []):
        key, raw = kv.split("=", 1)
        _set(d, key.strip(), raw)
    return validate(_build(RunConfig, d, ""))


def check(cfg) -> None:
    bad = [m for m in cfg.compare.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"compare.methods: unknown {', '.join(bad)} (known: {', '.join(METHODS)})")
    if "external" in cfg.compare.methods and not cfg.compare.external_path:
        raise ConfigError("compare.methods has 'external' but compare.external_path is not set")
    if "teacher" in cfg.compare.methods and not cfg.compare.teacher_path:
        raise ConfigError("compare.methods has 'teacher' but compare.teacher_path is not set")
    if cfg.compare.no_steering_samples < 1:
        raise ConfigError("compare.no_steering_samples must be >= 1")
    method_overrides(cfg)


def _thinksafe_data(cfg, overrides, show, log) -> Path:
    sub = sub_config(cfg, "thinksafe", overrides)
    d = prepare_run_dir(sub)
    for stage in DATA_STAGES:
        ensure(stage, sub, d, show, log=_prefixed(log, "thinksafe"))
    return d


def _prefixed(log, method: str):
    """The pipeline's "[stage] ..." lines as "[compare METHOD: stage] ..."."""
    return lambda line: log(f"[compare {method}: {line[1:]}" if line.startswith("[") else f"[compare {method}] {line}")


def derives_from_thinksafe(method: str, cfg) -> bool:
    """The method's set is made from ThinkSafe's accepted rows (its dataset stage runs first)."""
    return method in NEEDS_THINKSAFE - {"thinksafe", "thinksafe_2_rounds"} or (method == "direct_refusal" and cfg.compare.direct_refusal_benign)


def set_stage(method: str, cfg) -> Stage:
    """A baseline's training set as a stage of its sub-run, recorded as its ``dataset`` (the train
    stage consumes it the same way): ``thinksafe.baselines.build_set`` for ``method``; its key
    = the values of ``SET_READS[method]`` (+ ThinkSafe's dataset fingerprint when derived from it)."""
    if method not in SET_READS:
        raise ConfigError(f"no training set builder for '{method}'")
    derived = derives_from_thinksafe(method, cfg)
    return Stage("dataset", SET_READS[method], (f"{THINKSAFE_DATA}:dataset",) if derived else (), (),
                 ("sft.jsonl", "dataset_stats.json", "generated.jsonl", "judged.jsonl"),
                 "thinksafe.baselines:build_set", content="sft.jsonl",
                 args=(("method", method),) + ((("thinksafe", THINKSAFE_DATA),) if derived else ()))


def eval_stage(method: str) -> Stage:
    """One method's evaluation: the evaluate stage on the method's model alone (``base``: the base
    model, with the steered check; else the model its train — or grpo — stage wrote), tagged with
    the method's name; kept while its key (the evaluate config + that model) holds."""
    producer = () if method == "base" else ("grpo",) if method == "grpo" else ("train",)
    return replace(BY_NAME["evaluate"], after=producer, inputs=(), parts=((f"eval/{method}", producer),),
                   complete=lambda s: method in s, args=(("models", (method,)), ("steered", method == "base")))


def _evaluate(sub, d: Path, method: str, show: bool, log=print) -> dict:
    summary = ensure(eval_stage(method), sub, d, show, log=_prefixed(log, method))
    if method not in summary:
        raise DataError(f"{d}: no adapter/ or model/ after training")
    return summary[method]


def _compute(d: Path, stages, notes: list | None = None) -> tuple[float | None, float | None]:
    """(FLOPs, seconds) summed over the recorded stages of a sub-run: FLOPs None when one is
    unknown; seconds sum what is known (a stage without seconds is named in ``notes``)."""
    p = d / "manifest.json"
    m = json.loads(p.read_text()) if p.exists() else {"stages": {}}
    flops, secs = 0.0, 0.0
    for s in stages:
        c = (m["stages"].get(s) or {}).get("compute")
        if c is None:
            continue
        flops = None if flops is None or c.get("flops") is None else flops + c["flops"]
        if c.get("seconds") is None:
            if notes is not None:
                notes.append(f"{s} seconds not recorded")
        else:
            secs += c["seconds"]
    return flops, secs


def run_compare(cfg: RunConfig, show: bool = True, log=print) -> dict:
    check(cfg)
    out = prepare_run_dir(cfg)
    overrides = method_overrides(cfg)
    methods = list(dict.fromkeys(cfg.compare.methods))
    if "grpo" in methods:                       # its target and budget come from ThinkSafe's row
        methods = [m for m in methods if m != "grpo"] + ["grpo"]
    need_ts = any(m == "thinksafe" or derives_from_thinksafe(m, cfg) for m in methods)
    ts_dir = _thinksafe_data(cfg, overrides, show, log) if need_ts else None
    rows, results = [], {}
    for method in methods:
        t0 = time.time()
        notes: list[str] = []
        sub, d, metrics = _run_method(cfg, method, overrides, ts_dir, results, show, log, notes)
        row = _row(cfg, method, sub, d, metrics, ts_dir, show, notes, log)
        rows.append(row)
        results[method] = {"dir": str(d), "metrics": metrics, "flops": row["flops"]}
        log(f"[compare {method}] done in {time.time() - t0:.1f}s")
    ts_flops = (results.get("thinksafe") or {}).get("flops")
    for row in rows:
        row["flops_vs_thinksafe"] = (row["flops"] / ts_flops if ts_flops and row.get("flops") is not None
                                     else None)
    table = {"name": cfg.name, "seed": cfg.seed, "columns": COLUMNS, "rows": rows,
             "flops_note": "data + training FLOPs (thinksafe.compute: 2N per inference token, "
                           "(4N_frozen + 6N_lora) per LoRA training token); evaluation apart"}
    write_json(out / "compare.json", table)
    write_text(out / "compare.md", to_markdown(table))
    return table


def _run_method(cfg, method: str, overrides, ts_dir: Path | None, results: dict, show: bool, log,
                notes: list) -> tuple[RunConfig, Path, dict]:
    """The stages of one method in its sub-run: (its config, its folder, its evaluation's numbers)."""
    sub = sub_config(cfg, method, overrides)
    if method == "grpo":
        sub = grpo_config(cfg, sub, results.get("thinksafe"), notes)
    if method == "thinksafe_2_rounds":       # round 2 on the thinksafe sub-run's student (thinksafe.rounds)
        sub = second_round(sub, sub_config(cfg, "thinksafe", overrides), ts_dir, show,
                           _prefixed(log, method), ensure, prepare_run_dir)
    d = prepare_run_dir(sub) if method != "thinksafe" else ts_dir
    say = _prefixed(log, method)
    if method == "grpo":
        ensure("grpo", sub, d, show, log=say)
    elif method not in ("base", "thinksafe", "thinksafe_2_rounds"):
        ensure(set_stage(method, cfg), sub, d, show, log=say)
    if method == "opsa_searched_context":     # the context picked by teacher flip rate (`thinksafe steer`)
        sub = searched_context(sub, d, show, say, notes)
    if method not in ("base", "grpo"):
        ensure("train", sub, d, show, log=say)
    return sub, d, _evaluate(sub, d, method, show, log)


def _row(cfg, method: str, sub, d: Path, metrics: dict, ts_dir: Path | None, show: bool, notes: list,
         log=print) -> dict:
    """The method's row: its evaluation's numbers, its training set's size and perplexity under the
    base model, and the compute of its data and training (evaluation apart)."""
    row = {"method": method, **{k: metrics.get(k) for k in COLUMNS[1:5]}}
    trained = method not in ("base", "grpo")
    row["train_examples"] = len(read_jsonl(d / "sft.jsonl")) if trained else 0
    row["perplexity"] = None
    if trained and method not in OPSA_METHODS and cfg.compare.perplexity:
        row["perplexity"] = ensure(PERPLEXITY, _base_model(cfg, sub), d, show, log=_prefixed(log, method))["perplexity"]
    stages = ("grpo",) if method == "grpo" else TRAIN_STAGES
    flops, secs = _compute(d, stages, notes) if method != "base" else (0.0, 0.0)
    if method in ("no_reasoning", "thinksafe_kl") and ts_dir is not None:
        f2, s2 = _compute(ts_dir, ("generate", "judge"), notes)
        flops = None if flops is None or f2 is None else flops + f2
        secs += s2
        notes.append("data compute = ThinkSafe's generate + judge")
    if method == "thinksafe_2_rounds" and ts_dir is not None:    # both rounds' data + training
        f2, s2 = _compute(ts_dir, TRAIN_STAGES, notes)
        flops, secs = (None if flops is None or f2 is None else flops + f2), secs + s2
        notes.append("FLOPs = round 1 (ThinkSafe's data + training) + round 2 (the round-1 student's)")
    notes.extend(_notes(cfg, method, sub, d))
    row.update(flops=flops, seconds=secs, flops_eval=_compute(d, ("evaluate",))[0], notes="; ".join(notes))
    return row


def _base_model(cfg, sub) -> RunConfig:
    """The method's config with the compare config's (base) model: perplexity is under the base."""
    return replace(sub, model=cfg.model)


def _notes(cfg, method: str, sub, d: Path) -> list[str]:
    """What the row's numbers include and leave out, per method."""
    c = cfg.compare
    if method == "no_steering" or (method == "direct_refusal" and c.direct_refusal_benign):
        return ["benign rows reused from ThinkSafe (their generation not counted here)"]
    if method == "external":
        return ["data from an external teacher (its compute unknown, not counted)"]
    if method == "teacher":
        return [f"data written by {c.teacher_path} (generation FLOPs at its size)"]
    if method == "grpo":
        return grpo_notes(d, sub)
    if method in OPSA_METHODS:
        return [f"on-policy: rollouts + teacher + student counted in train; context {sub.opsa.context!r}"]
    return []


def searched_context(sub: RunConfig, d: Path, show: bool, log, notes: list) -> RunConfig:
    """``opsa.context`` := the context ``thinksafe steer`` picks: the ``steer`` stage, run in
    ``d/steer/`` and kept while its key (the model, guard, prompts, generation and steer settings) holds."""
    res = ensure(STEER, sub, d, show, log=log)
    if not res.get("chosen"):
        raise DataError(f"opsa_searched_context: steer chose no context ({res.get('why')})")
    row = next(r for r in res["rows"] if r["context"] == res["chosen"])
    notes.append(f"steer picked {res['chosen']!r} (flip rate {row['flip_rate']:.2f}, "
                 f"false refusal {row['false_refusal_rate'] or 0:.2f}; the search's {res.get('seconds')} s "
                 "of generation and judging are not in FLOPs)")
    return replace(sub, opsa=replace(sub.opsa, context=res["chosen"]))


def grpo_config(cfg: RunConfig, sub: RunConfig, thinksafe: dict | None, notes: list) -> RunConfig:
    """GRPO's target (ThinkSafe's harmful rate + slack) and budget (``grpo_budget`` x ThinkSafe's
    FLOPs) when ThinkSafe ran in this compare; the config's own grpo settings otherwise."""
    g = sub.grpo
    if thinksafe is None:
        notes.append("no ThinkSafe row: GRPO ran with its own grpo settings")
        return sub
    target = thinksafe["metrics"].get("harmful_rate")
    budget = thinksafe.get("flops")
    changes = {}
    if target is not None and g.check_every > 0:
        changes["stop_at_harmful"] = min(1.0, target + cfg.compare.grpo_target_slack)
    if budget:
        changes["max_flops"] = cfg.compare.grpo_budget * budget
    return replace(sub, grpo=replace(g, **changes))


def grpo_notes(d: Path, sub: RunConfig) -> list[str]:
    p = d / "grpo_summary.json"
    if not p.exists():
        return []
    s = json.loads(p.read_text())
    g = sub.grpo
    out = [f"{s['steps']} steps, {s['completions']} completions; stopped: {s['stopped']}"]
    if s.get("check_split"):
        out.append(f"checks on the {s['check_split']}")
    if g.stop_at_harmful is not None:
        from thinksafe.stages.grpo import first_reaching
        hit = first_reaching(s.get("checks") or [], g.stop_at_harmful)
        out.append(f"reached harmful <= {g.stop_at_harmful:.3f} at step {hit['step']}" if hit else
                   f"never reached harmful <= {g.stop_at_harmful:.3f} (last check "
                   f"{(s.get('checks') or [{}])[-1].get('harmful_rate', 'n/a')})")
    return out


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e4 else f"{v:.3f}"
    return str(v)


def to_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = [f"# compare: {table['name']} (seed {table['seed']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += ["", f"FLOPs: {table['flops_note']}. Perplexity: of the method's training responses "
              "under the base model (token-weighted). n/a = not measured or not applicable.", ""]
    return "\n".join(lines)

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
- ``opsa`` — on-policy self-distillation (``train.objective: opsa``, ``thinksafe.stages.opsa``) on every
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
data + training: FLOPs and seconds; evaluation compute is listed apart). Every stage of every
sub-run is kept while its key holds (``thinksafe.pipeline``) and rerun, with its reason logged, when
the config it reads or its inputs changed; a baseline's training set is keyed by the config and
ThinkSafe's data it derives from. A rerun resumes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from thinksafe.config import RunConfig, _build, _set, check_ranges, to_dict
from thinksafe.errors import ConfigError, DataError
from thinksafe.io import read_jsonl, write_json, write_text

METHODS = ("base", "thinksafe", "thinksafe_kl", "direct_refusal", "no_steering", "no_reasoning", "teacher",
           "external", "grpo", "opsa", "opsa_searched_context", "thinksafe_2_rounds")
OPSA_METHODS = ("opsa", "opsa_searched_context")
NEEDS_THINKSAFE = {"thinksafe", "thinksafe_kl", "no_reasoning", "no_steering", "thinksafe_2_rounds"}
# built-in settings of a method (a user's compare.set for it comes after, and wins)
METHOD_DEFAULTS = {"thinksafe_kl": ["train.objective=kl"], "opsa": ["train.objective=opsa"],
                   "opsa_searched_context": ["train.objective=opsa"]}
DATA_STAGES = ("generate", "judge", "dataset")
TRAIN_STAGES = ("generate", "judge", "dataset", "train")
COLUMNS = ["method", "harmful_rate", "harmful_rate_oracle", "over_refusal_rate", "reasoning_accuracy",
           "train_examples", "perplexity", "flops", "flops_vs_thinksafe", "seconds", "flops_eval", "notes"]


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
    return check_ranges(_build(RunConfig, d, ""))


def check(cfg) -> None:
    bad = [m for m in cfg.compare.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"compare.methods: unknown {', '.join(bad)} (known: {', '.join(METHODS)})")
    if "external" in cfg.compare.methods and not cfg.compare.external_path:
        raise ConfigError("compare.methods has 'external' but compare.external_path is not set")
    if "teacher" in cfg.compare.methods and not cfg.compare.teacher_path:
        raise ConfigError("compare.methods has 'teacher' but compare.teacher_path is not set")
    if "grpo" in cfg.compare.methods:
        from thinksafe.stages.grpo import check_grpo_config
        check_grpo_config(cfg.grpo)
    if cfg.compare.no_steering_samples < 1:
        raise ConfigError("compare.no_steering_samples must be >= 1")
    method_overrides(cfg)


def _thinksafe_data(cfg, overrides, show, log) -> Path:
    from thinksafe.pipeline import ensure, prepare_run_dir
    sub = sub_config(cfg, "thinksafe", overrides)
    d = prepare_run_dir(sub)
    for stage in DATA_STAGES:
        ensure(stage, sub, d, show, log=_prefixed(log, "thinksafe"))
    return d


def _prefixed(log, method: str):
    """The pipeline's "[stage] ..." lines as "[compare METHOD: stage] ..."."""
    return lambda line: log(f"[compare {method}: {line[1:]}" if line.startswith("[") else f"[compare {method}] {line}")


def _set_key(method: str, cfg, sub, ts_dir: Path | None) -> str:
    """What a baseline's training set depends on: the config (but train, evaluate, grpo) and the
    ThinkSafe data it derives from."""
    import hashlib
    import json

    from thinksafe.pipeline import read_manifest
    d = {k: v for k, v in to_dict(sub).items() if k not in ("train", "evaluate", "grpo", "out", "name",
                                                                "opsa", "steer")}
    d = {k: v for k, v in d.items() if k not in ("rounds", "rounds_from", "student")}   # thinksafe.rounds
    d["compare"] = to_dict(cfg)["compare"]
    ts = (read_manifest(ts_dir)["stages"].get("dataset") or {}).get("fingerprint") if ts_dir else None
    blob = json.dumps({"method": method, "config": d, "thinksafe": ts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_set(method: str, cfg, sub, d: Path, ts_dir: Path | None, show: bool, log=print) -> None:
    """Write the method's sft.jsonl in ``d`` and record its data stages in d's manifest; kept when
    what it depends on is unchanged (``_set_key``), else its old files are moved into old/."""
    from thinksafe import baselines
    from thinksafe.pipeline import read_manifest, record_stage
    from thinksafe.prompts import load_prompts
    from thinksafe.runfolder import move_aside
    key = _set_key(method, cfg, sub, ts_dir)
    done = read_manifest(d)["stages"].get("dataset") or {}
    if done.get("set_key") == key:
        return
    if done:
        moved = move_aside(d, ["sft.jsonl", "dataset_stats.json", "generated.jsonl", "judged.jsonl"], "dataset")
        log(f"[compare {method}: dataset] reruns (its config or ThinkSafe's data changed); "
            f"moved aside {', '.join(moved) or 'nothing'}")
    ts_rows = read_jsonl(ts_dir / "sft.jsonl") if ts_dir else []
    ts_benign = [r for r in ts_rows if r.get("label") != "harmful"]
    c = cfg.compare
    t0, stages = time.time(), {}
    if method == "direct_refusal":
        rows, stats = baselines.direct_refusal(load_prompts(sub), ts_benign if c.direct_refusal_benign else None)
    elif method == "no_reasoning":
        rows, stats = baselines.no_reasoning(ts_rows)
        stats["derived_from"] = str(ts_dir)
    elif method == "thinksafe_kl":             # ThinkSafe's data, trained with KL on benign rows
        rows, stats = ts_rows, {"kept": len(ts_rows), "derived_from": str(ts_dir)}
    elif method == "no_steering":
        rows, stats, stages = baselines.no_steering(sub, d, load_prompts(sub), ts_benign,
                                                    c.no_steering_samples, show)
    elif method == "teacher":
        rows, stats, stages = baselines.teacher(sub, d, load_prompts(sub), c.teacher_path, c.teacher_family, show)
    elif method in OPSA_METHODS:               # on-policy: every training prompt, no responses
        rows = [baselines.row(r.id, r.prompt, "", r.label, r.meta.get("category") or "", "")
                for r in load_prompts(sub)]
        stats = {"kept": len(rows), "prompts_only": True}
    elif method == "external":
        rows, stats = baselines.external(c.external_path, c.external_prompt_field,
                                         c.external_response_field, c.external_limit)
    else:
        raise ConfigError(f"no training set builder for '{method}'")
    for name, (summary, scfg) in stages.items():   # generated + judged here: recorded as their own
        record_stage(d, name, summary, scfg)         # stages (scfg: the teacher's config, for its FLOPs)
    if stages:
        t0 = time.time()        # generate / judge carry their own seconds
    stats["seconds"] = round(time.time() - t0, 1)
    baselines.write(d, rows, stats)
    record_stage(d, "dataset", stats, sub, {"set_key": key})


def _evaluate(sub, d: Path, method: str, show: bool, log=print) -> dict:
    """One method's evaluation, kept while its key (evaluate config + the trained model) holds."""
    from thinksafe.pipeline import BY_NAME, _eval_summary, read_manifest, record_stage, stage_key, why
    from thinksafe.runfolder import move_aside
    from thinksafe.stages.evaluate import evaluate_model
    m = read_manifest(d)
    key, values, inputs = stage_key(BY_NAME["evaluate"], sub, m)
    done = m["stages"].get("evaluate") or {}
    if done.get("key") == key and method in (done.get("summary") or {}):
        return done["summary"][method]
    if done.get("key"):
        reasons = why(BY_NAME["evaluate"], done, values, inputs)
        if any("output changed" in r for r in reasons):
            move_aside(d, [f"eval/{method}"], "evaluate")
        log(f"[compare {method}: evaluate] reruns: {'; '.join(reasons)}")
    adapter = None
    if method != "base":
        if (d / "adapter" / "adapter_config.json").exists():
            adapter = str(d / "adapter")
        elif (d / "model" / "config.json").exists():          # train.method: full
            sub = replace(sub, model=replace(sub.model, path=str(d / "model")))
        else:
            raise DataError(f"{d}: no adapter/ or model/ after training")
    m = evaluate_model(sub, d, method, adapter, show, steered_check=(method == "base"))
    summary = {method: _eval_summary(m)}
    record_stage(d, "evaluate", summary, sub, {"key": key, "config": values, "inputs": inputs})
    return summary[method]


def _compute(d: Path, stages, notes: list | None = None) -> tuple[float | None, float | None]:
    """(FLOPs, seconds) summed over the recorded stages of a sub-run: FLOPs None when one is
    unknown; seconds sum what is known (a stage without seconds is named in ``notes``)."""
    import json
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
    from thinksafe.pipeline import ensure, prepare_run_dir
    check(cfg)
    out = prepare_run_dir(cfg)
    overrides = method_overrides(cfg)
    methods = list(dict.fromkeys(cfg.compare.methods))
    if "grpo" in methods:                       # its target and budget come from ThinkSafe's row
        methods = [m for m in methods if m != "grpo"] + ["grpo"]
    need_ts = any(m in NEEDS_THINKSAFE for m in methods) or \
        ("direct_refusal" in methods and cfg.compare.direct_refusal_benign)
    ts_dir = _thinksafe_data(cfg, overrides, show, log) if need_ts else None
    rows, results = [], {}
    for method in methods:
        t0 = time.time()
        sub = sub_config(cfg, method, overrides)
        notes = []
        if method == "grpo":
            sub = grpo_config(cfg, sub, results.get("thinksafe"), notes)
        if method == "thinksafe_2_rounds":       # round 2 on the thinksafe sub-run (thinksafe.rounds)
            from thinksafe.rounds import second_round
            sub = second_round(sub, sub_config(cfg, "thinksafe", overrides), ts_dir, show,
                               _prefixed(log, method), ensure, prepare_run_dir)
        d = prepare_run_dir(sub) if method != "thinksafe" else ts_dir
        say = _prefixed(log, method)
        if method == "grpo":
            ensure("grpo", sub, d, show, log=say)
        elif method not in ("base", "thinksafe", "thinksafe_2_rounds"):
            build_set(method, cfg, sub, d, ts_dir, show, log)
        if method == "opsa_searched_context":     # the context picked by teacher flip rate (`thinksafe steer`)
            sub = searched_context(sub, d, show, say, notes)
        if method not in ("base", "grpo"):
            ensure("train", sub, d, show, log=say)
        metrics = _evaluate(sub, d, method, show, log)
        row = {"method": method, **{k: metrics.get(k) for k in COLUMNS[1:5]}}
        sft = d / "sft.jsonl"
        row["train_examples"] = len(read_jsonl(sft)) if method not in ("base", "grpo") else 0
        row["perplexity"] = None
        if method not in ("base", "grpo", *OPSA_METHODS) and cfg.compare.perplexity:
            from thinksafe.stages.perplexity import perplexity, summary_path
            ppl_out = d / "sft.ppl.base.jsonl"
            sp = summary_path(ppl_out)
            if sp.exists():
                import json
                ps = json.loads(sp.read_text())
            else:
                ps = perplexity(sft, cfg.model.path, family=cfg.model.family, out=ppl_out,
                                max_length=sub.train.max_length, dtype=cfg.model.dtype,
                                device=cfg.model.device, show=show)
            row["perplexity"] = ps["perplexity"]
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
        if method == "no_steering" or (method == "direct_refusal" and cfg.compare.direct_refusal_benign):
            notes.append("benign rows reused from ThinkSafe (their generation not counted here)")
        if method == "external":
            notes.append("data from an external teacher (its compute unknown, not counted)")
        if method == "teacher":
            notes.append(f"data written by {cfg.compare.teacher_path} (generation FLOPs at its size)")
        if method == "grpo":
            notes.extend(grpo_notes(d, sub))
        if method in OPSA_METHODS:
            notes.append(f"on-policy: rollouts + teacher + student counted in train; context {sub.opsa.context!r}")
        row.update(flops=flops, seconds=secs, flops_eval=_compute(d, ("evaluate",))[0],
                   notes="; ".join(notes))
        rows.append(row)
        results[method] = {"dir": str(d), "metrics": metrics, "flops": flops}
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


def searched_context(sub: RunConfig, d: Path, show: bool, log, notes: list) -> RunConfig:
    """``opsa.context`` := the context ``thinksafe steer`` picks (run in ``d``, kept while its
    settings hold: the model, guard, prompts, generation and steer sections)."""
    import hashlib
    import json

    from thinksafe.stages.steer import run_steer
    want = {k: to_dict(sub)[k] for k in ("seed", "model", "guard", "prompts", "generate", "steer")}
    key = hashlib.sha256(json.dumps(want, sort_keys=True, default=str).encode()).hexdigest()[:16]
    p = d / "steer" / "steer.json"
    res = json.loads(p.read_text()) if p.exists() else {}
    if res.get("key") != key:
        log("[steer] measuring teacher flip rates")
        res = run_steer(replace(sub, out=str(d)), show=show, log=log)
        res["key"] = key
        write_json(p, res)
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
    import json
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

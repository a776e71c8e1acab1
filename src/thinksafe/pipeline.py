"""The run as a table of stages. Each stage says which config values it reads, which stages'
outputs it consumes and which files it writes; this module owns the run folder, the cache keys and
the order. No stage imports this module or another stage.

A stage's key = hash(the config values it reads, the fingerprints of the stages it consumes). A
stage whose recorded key equals its key now is kept; otherwise it reruns, and so does whatever
consumes it, with the reason logged ("train.lr: 1e-05 -> 0.0002", "train's output changed").
Its old outputs are moved into ``old/<time>-<stage>/`` first (never deleted, never half
overwritten); nothing upstream is touched. A stage's fingerprint is its key plus the time it
finished (a rerun on purpose changes it), or, for ``dataset``, the bytes of ``sft.jsonl`` (a
dataset rerun that keeps the same rows does not retrain). Values that only change speed
(``PERFORMANCE``) are in no key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import yaml

from thinksafe.config import RunConfig, to_dict
from thinksafe.errors import ConfigError
from thinksafe.io import iter_jsonl, write_text
from thinksafe.errors import ThinksafeError
from thinksafe.runfolder import move_aside, move_aside_to, put_back, read_manifest, update_manifest

GENERATE_READS = ("generate.steering", "generate.samples", "generate.temperature", "generate.top_p",
                  "generate.top_k", "generate.max_new_tokens")
EVAL_READS = ("evaluate.benchmarks", "evaluate.data_dir", "evaluate.n_harmful", "evaluate.n_reasoning",
              "evaluate.n_borderline", "evaluate.samples")


@dataclass(frozen=True)
class Stage:
    name: str                       # = CLI verb = module under thinksafe.stages
    reads: tuple[str, ...]          # config sections / dotted values whose change changes its output
    after: tuple[str, ...]          # stages whose outputs it consumes
    inputs: tuple[str, ...]         # files it reads (of those stages)
    outputs: tuple[str, ...]        # files / folders it writes (globs allowed)
    run: str                        # "module:function" (cfg, run_dir, show) -> summary
    content: str | None = None      # an output whose bytes are the fingerprint downstream sees
    # (output, what makes it stale): "config" = this stage's reads, or an upstream stage's name.
    # Default: every output goes stale on any change. A stage that checks its saved files itself
    # (evaluate: settings.json per benchmark) lists less.
    parts: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    complete: Callable[[dict], bool] | None = None   # summary -> recorded as done?


STAGES: tuple[Stage, ...] = (
    Stage("generate", ("seed", "model", "prompts", *GENERATE_READS), (), (),
          ("generated.jsonl", "generated.shard-*-of-*.jsonl"), "thinksafe.stages.generate:run"),
    Stage("judge", ("guard", "generate.max_attempts", "generate.allow_incomplete"), ("generate",),
          ("generated.jsonl",), ("judged.jsonl",), "thinksafe.stages.judge:run"),
    Stage("dataset", ("seed", "dataset", *EVAL_READS), ("judge",), ("judged.jsonl",),
          ("sft.jsonl", "dataset_stats.json", "sft_dataset"), "thinksafe.stages.dataset:run",
          content="sft.jsonl"),
    Stage("train", ("seed", "model.path", "model.family", "model.dtype", "train"), ("dataset",),
          ("sft.jsonl",), ("adapter", "model", "checkpoints", "train_summary.json", "train_log.jsonl",
                           "tensorboard"), "thinksafe.stages.train:run"),
    Stage("evaluate", ("seed", "model", "guard", "evaluate"), ("train",), ("adapter", "model"),
          ("eval",), "thinksafe.pipeline:run_evaluate",
          parts=(("eval/base", ()), ("eval/thinksafe", ("train",))),
          complete=lambda s: "thinksafe" in s),
    Stage("report", ("name", "seed", "model.path", "model.family"), ("evaluate", "dataset", "train"),
          ("eval", "dataset_stats.json", "train_summary.json"),
          ("summary.json", "summary.csv", "report.md", "pareto.png"), "thinksafe.pipeline:run_report"),
)
# Not part of `thinksafe run`: the GRPO baseline, in a folder of its own.
GRPO = Stage("grpo", ("seed", "model", "guard", "prompts", "grpo", "train.lora", "generate.max_new_tokens",
                      *EVAL_READS, "evaluate.max_new_tokens", "evaluate.temperature", "evaluate.top_p",
                      "evaluate.top_k"), (), (),
             ("adapter", "checkpoints", "grpo_steps.jsonl", "grpo_checks.jsonl", "grpo_summary.json",
              "grpo_log.jsonl", "tensorboard"), "thinksafe.stages.grpo:run")
BY_NAME = {s.name: s for s in (*STAGES, GRPO)}
ORDER = [s.name for s in STAGES]
# Values that change speed or bookkeeping, not what a stage writes.
PERFORMANCE = {"model.batch_size", "model.generation", "model.gpu_memory_utilization",
               "model.tensor_parallel_size", "guard.batch_size", "guard.server_timeout",
               "generate.shard", "train.logging_steps", "train.report_to", "grpo.logging_steps",
               "grpo.save_steps",
               "cluster"}      # no stage reads it; listed so that it stays out of every key


# ----------------------------------------------------------------------------- keys
def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else k, out)
    else:
        out[prefix] = value


def extra_reads(stage: Stage, cfg: RunConfig) -> tuple[str, ...]:
    """Sections a stage reads only under some setting (so its key changes only when that setting is
    used): train with ``objective: opsa`` also reads ``opsa`` and the rollout length fallback."""
    if stage.name == "train" and getattr(cfg.train, "objective", None) == "opsa":
        return ("opsa", "generate.max_new_tokens")
    from thinksafe.rounds import round_reads        # iterative rounds: the previous student
    return round_reads(stage.name, cfg)


def config_values(stage: Stage, cfg: RunConfig) -> dict:
    """The dotted config values a stage reads (minus ``PERFORMANCE``), JSON-safe."""
    tree = json.loads(json.dumps(to_dict(cfg), default=str))
    out: dict = {}
    for path in (*stage.reads, *extra_reads(stage, cfg)):
        node = tree
        for k in path.split("."):
            node = node[k]
        _flatten(node, path, out)
    from thinksafe.rounds import student_identity   # its path + the fingerprint of its training
    out = {k: student_identity(v) if k == "student" else v for k, v in out.items()}
    return {k: v for k, v in sorted(_as_used(cfg, out).items()) if k not in PERFORMANCE}


# Values that are in no key while at their default: fields added after runs were recorded (a
# finished run stays "unchanged, kept").
OMIT_AT_DEFAULT = {"prompts.limit": None}
ORGANISM_ONLY = ("prompts.n_harmful", "prompts.n_reasoning", "prompts.n_borderline")
FILE_ONLY = ("prompts.prompt_field", "prompts.label_field", "prompts.default_label")


def _as_used(cfg: RunConfig, values: dict) -> dict:
    """The values as the run uses them: one the prompt source ignores (the organism counts of a
    file or Hub source, a file's field names for the organism) counts at its default, so changing
    it reruns nothing."""
    from thinksafe.config import PromptsConfig
    default = to_dict(PromptsConfig())
    ignored = FILE_ONLY if cfg.prompts.source == "organism" else ORGANISM_ONLY
    out = dict(values)
    for k in ignored:
        if k in out:
            out[k] = default[k.split(".", 1)[1]]
    return {k: v for k, v in out.items() if not (k in OMIT_AT_DEFAULT and v == OMIT_AT_DEFAULT[k])}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_key(stage: Stage, cfg: RunConfig, manifest: dict) -> tuple[str, dict, dict]:
    """(key, config values, upstream fingerprints) from the upstream stages as recorded."""
    values = config_values(stage, cfg)
    inputs = {u: (manifest["stages"].get(u) or {}).get("fingerprint") for u in stage.after}
    return _hash({"stage": stage.name, "config": values, "inputs": inputs}), values, inputs


def why(stage: Stage, entry: dict | None, values: dict, inputs: dict) -> list[str]:
    """What differs from the recorded run of the stage (empty: nothing)."""
    if not entry or "key" not in entry:
        return ["not done yet"]
    old = entry.get("config") or {}
    out = [f"{k}: {old.get(k, '(unset)')} -> {v}" for k, v in values.items() if old.get(k) != v]
    out += [f"{k}: removed" for k in old if k not in values]
    out += [f"{u}'s output changed" for u, fp in inputs.items() if (entry.get("inputs") or {}).get(u) != fp]
    return out or ["key changed"]


def _fingerprint(stage: Stage, run_dir: Path, key: str, finished: str) -> str:
    if stage.content and (run_dir / stage.content).is_file():
        h = hashlib.sha256()
        with open(run_dir / stage.content, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()[:16]
    return _hash({"key": key, "finished": finished})


# ----------------------------------------------------------------------------- the manifest
def record_stage(run_dir: Path, stage: str, summary: dict, cfg: RunConfig | None = None,
                 key: dict | None = None) -> None:
    """Record a finished stage (``key``: key, config, inputs) with its compute, under the lock."""
    finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    entry = {"summary": summary, "finished_at": finished}
    if key:
        entry.update(key)
    st = BY_NAME.get(stage)
    run_id = f"{finished}/{time.time_ns()}/{os.getpid()}"      # a rerun on purpose is another output
    entry["fingerprint"] = _fingerprint(st, Path(run_dir), entry.get("key", ""), run_id) if st else \
        _hash({"finished": run_id, "stage": stage})
    try:            # compute accounting (thinksafe.compute); never fails the stage itself
        from thinksafe import compute
        entry["compute"] = compute.for_run(stage, summary, Path(run_dir), cfg)
    except Exception as e:      # noqa: BLE001 - recorded, not hidden
        entry["compute"] = {"error": f"{type(e).__name__}: {e}"}

    def change(m):
        m["stages"][stage] = entry
        (m.get("started") or {}).pop(stage, None)
        try:
            from thinksafe import compute
            m["compute_total"] = compute.total(m["stages"])
        except Exception as e:  # noqa: BLE001
            m["compute_total"] = {"error": f"{type(e).__name__}: {e}"}
    update_manifest(run_dir, change)


def stage_done(run_dir: Path, stage: str) -> dict | None:
    return read_manifest(run_dir)["stages"].get(stage, {}).get("summary")


def prepare_run_dir(cfg: RunConfig, force: bool = False) -> Path:
    """Create the run folder and save the config it runs with. Earlier stages made with another
    config are not refused here: each stage's key decides what reruns (``force`` is unused, kept
    for callers). Entries of a manifest from before keys existed get the keys of the config saved
    with them, so an unchanged folder is kept as it is."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    identity = to_dict(cfg)
    identity["generate"]["shard"] = "0/1"      # shards of one run share its folder
    _adopt_legacy(run_dir, saved)
    write_text(saved, yaml.safe_dump(identity, sort_keys=False))
    return run_dir


def _adopt_legacy(run_dir: Path, saved: Path) -> None:
    m = read_manifest(run_dir)
    legacy = [s for s in ORDER + ["grpo"] if s in m["stages"] and "key" not in m["stages"][s]]
    if not legacy or not saved.is_file():
        return
    from thinksafe.config import load_config
    try:
        old = load_config(saved)
    except Exception:   # noqa: BLE001 - an unreadable old config: those stages simply rerun
        return

    def change(m):
        for name in ORDER + ["grpo"]:
            e = m["stages"].get(name)
            if e is None or "key" in e:
                continue
            key, values, inputs = stage_key(BY_NAME[name], old, m)
            e.update(key=key, config=values, inputs=inputs,
                     fingerprint=_fingerprint(BY_NAME[name], run_dir, key, e.get("finished_at", "")))
    update_manifest(run_dir, change)


# ----------------------------------------------------------------------------- running stages
def _call(stage: Stage, cfg: RunConfig, run_dir: Path, show: bool):
    module, fn = stage.run.split(":")
    return getattr(import_module(module), fn)(cfg, run_dir, show=show)


def _stale_parts(stage: Stage, entry: dict | None, values: dict, inputs: dict, run_dir: Path) -> list[str]:
    """Outputs to move aside before the stage reruns."""
    started = entry or {}
    if not started.get("key"):
        return []
    config_changed = started.get("config") != values
    changed = {u for u, fp in inputs.items() if (started.get("inputs") or {}).get(u) != fp}
    parts = stage.parts if stage.parts is not None else [(o, ("config", *stage.after)) for o in stage.outputs]
    return [out for out, deps in parts
            if ("config" in deps and config_changed) or any(d in changed for d in deps)]


def ensure(name: str, cfg: RunConfig, run_dir: Path, show: bool = True, force: bool = False,
           log=print, check_upstream: bool = False) -> dict:
    """Run stage ``name`` unless its recorded key is its key now (or ``force``); log which and why."""
    stage = BY_NAME[name]
    run_dir = Path(run_dir)
    if not _main_process():                 # `accelerate launch`: rank 0 keeps the books
        return _follow(stage, cfg, run_dir, show)
    if name == "generate":
        _merge_shards(cfg, run_dir, log)
    m = read_manifest(run_dir)
    if check_upstream:
        _check_upstream(stage, cfg, m)
    key, values, inputs = stage_key(stage, cfg, m)
    entry = m["stages"].get(name)
    if entry and entry.get("key") == key and not force:
        log(f"[{name}] unchanged (key {key}), kept")
        return entry["summary"]
    reasons = ["forced"] if force and entry and entry.get("key") == key else why(stage, entry, values, inputs)
    # what a run of this stage left behind: the finished run's outputs, or an unfinished start's
    before = entry if entry and entry.get("key") else (m.get("started") or {}).get(name)
    stale = _stale_parts(stage, before, values, inputs, run_dir)
    if force:
        stale = list(stage.outputs if stage.parts is None else [p for p, _ in stage.parts])
    moved, dest = move_aside_to(run_dir, stale, name) if stale else ([], None)
    note = f"; moved aside {', '.join(moved)} into {run_dir / 'old'}" if moved else ""
    log(f"[{name}] {'runs' if reasons == ['not done yet'] else 'reruns'}: {'; '.join(reasons)}{note}")
    t0 = time.time()
    def start(mm):      # the folder no longer holds the finished run's outputs: forget it
        mm.setdefault("started", {})[name] = {"key": key, "config": values, "inputs": inputs}
        if moved:
            mm["stages"].pop(name, None)

    def undo(mm):
        (mm.get("started") or {}).pop(name, None)
        if entry is not None:
            mm["stages"][name] = entry
    try:
        update_manifest(run_dir, start)
        _cluster_ledger()                   # cluster.engine: ray: the replicas of this stage only
        summary = _call(stage, cfg, run_dir, show)
        ledger = _cluster_ledger()
        if ledger and isinstance(summary, dict):
            summary = {**summary, "cluster": ledger}    # every replica in the compute accounting
    except ThinksafeError:
        # a user error before the stage wrote anything: what was moved aside goes back
        if moved and not any(_exists(run_dir, o) for o in stage.outputs):
            put_back(run_dir, moved, dest)
            update_manifest(run_dir, undo)
        raise
    if stage.complete is None or stage.complete(summary):
        record_stage(run_dir, name, summary, cfg, {"key": key, "config": values, "inputs": inputs})
        log(f"[{name}] done in {time.time() - t0:.1f}s")
    else:
        log(f"[{name}] partly done in {time.time() - t0:.1f}s (not recorded as finished)")
    return summary


def _cluster_ledger() -> dict | None:
    import sys
    mod = sys.modules.get("thinksafe.cluster")      # imported only where engine: ray ran
    return mod.take_ledger() if mod else None


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _follow(stage: Stage, cfg: RunConfig, run_dir: Path, show: bool, wait_s: float = 600.0) -> dict:
    """Another rank of a multi-process launch: wait until rank 0 has started the stage with this
    key (its old outputs moved aside), then run it alongside."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        m = read_manifest(run_dir)
        key = stage_key(stage, cfg, m)[0]
        if (m.get("started") or {}).get(stage.name, {}).get("key") == key:
            break                               # rank 0 runs it: run alongside
        done = m["stages"].get(stage.name) or {}
        if done.get("key") == key:
            return done["summary"]              # kept
        time.sleep(0.5)
    else:
        raise ConfigError(f"{stage.name}: rank {os.environ.get('RANK')} waited {wait_s:.0f}s for rank 0 to "
                          "start this stage; launch one stage at a time (e.g. `accelerate launch -m "
                          f"thinksafe.cli {stage.name} CONFIG`)")
    return _call(stage, cfg, run_dir, show)


def _check_upstream(stage: Stage, cfg: RunConfig, m: dict) -> None:
    """A stage command refuses to build on a recorded upstream stage made with another config:
    the whole chain up to generate for judge, dataset and train (an SFT set built under another
    judge config is stale too); evaluate and report look one stage up (another guard for the
    evaluation alone is a legitimate use)."""
    for u in (upstream_chain(stage) if stage.name in CHAIN_CHECKED else stage.after):
        e = m["stages"].get(u)
        if not e or "key" not in e:
            continue        # not recorded: the stage checks its input files itself
        key, values, inputs = stage_key(BY_NAME[u], cfg, m)
        if key != e["key"]:
            reasons = "; ".join(why(BY_NAME[u], e, values, inputs))
            raise ConfigError(f"{stage.name}: the {u} stage's outputs were made with another config "
                              f"({reasons}); run `thinksafe {u}` first, or `thinksafe run` to redo "
                              "exactly what changed")


CHAIN_CHECKED = ("judge", "dataset", "train")


def upstream_chain(stage: Stage) -> list[str]:
    """Every stage whose output ``stage`` builds on, directly or not, nearest first."""
    out: list[str] = []
    todo = list(stage.after)
    while todo:
        u = todo.pop(0)
        if u not in out:
            out.append(u)
            todo += BY_NAME[u].after
    return out


def run_stage(stage: str, cfg: RunConfig, run_dir: Path, show: bool = True, force: bool = False,
              log=None) -> dict:
    """One stage, as its command runs it: kept when unchanged, rerun (and said why) when not."""
    log = log or (lambda s: None)
    _check_engine(cfg, stage)
    if stage == "generate" and cfg.generate.shard != "0/1":
        return _run_shard(cfg, Path(run_dir), show, force, log)
    return ensure(stage, cfg, run_dir, show, force, log, check_upstream=True)


def run_all(cfg: RunConfig, show: bool = True, force: list[str] | tuple[str, ...] | bool = (),
            start: str | None = None, log=print) -> dict:
    """Every stage in order: each kept, or rerun with its reason. ``force``: stages to rerun on
    purpose (and so what consumes them); ``start``: rerun this stage and every one after it."""
    if cfg.generate.shard != "0/1":
        raise ConfigError("generate.shard is for `thinksafe generate` (one process per shard); "
                          "`run` generates everything, then judges the merged shards")
    _check_engine(cfg, "run")
    forced = set(_stage_names(force or (), "--force"))
    if start is not None:
        forced |= set(ORDER[ORDER.index(_stage_names([start], "--from")[0]):])
    from thinksafe.rounds import check_rounds       # iterative ThinkSafe (thinksafe.rounds)
    check_rounds(cfg)
    run_dir = prepare_run_dir(cfg)
    done = {name: ensure(name, cfg, run_dir, show, name in forced, log) for name in ORDER}
    if getattr(cfg, "rounds", 1) > 1:               # iterative ThinkSafe: rounds 2..k (thinksafe.rounds)
        from thinksafe.rounds import later_rounds
        done["rounds"] = later_rounds(cfg, show, log, ensure, prepare_run_dir, ORDER)
    return done


def _check_engine(cfg: RunConfig, stage: str) -> None:
    """``cluster.engine: ray`` without Ray: one line naming the extra, before anything runs."""
    if cfg.cluster.engine == "ray" and stage in ("run", "generate", "judge", "evaluate"):
        from thinksafe.cluster import require_ray
        require_ray()


def _stage_names(names, flag: str) -> list[str]:
    if names is True:
        return list(ORDER)
    bad = [n for n in names if n not in ORDER]
    if bad:
        raise ConfigError(f"{flag}: unknown stage {', '.join(bad)} (stages: {', '.join(ORDER)})")
    return list(names)


# ----------------------------------------------------------------------------- shards
def _run_shard(cfg: RunConfig, run_dir: Path, show: bool, force: bool, log) -> dict:
    """One shard of generate: recorded under ``shards`` with the generate key; the run records
    how many shards it expects."""
    from thinksafe.generation import output_path, parse_shard
    i, n = parse_shard(cfg.generate.shard)
    stage = BY_NAME["generate"]
    m = read_manifest(run_dir)
    key, values, inputs = stage_key(stage, cfg, m)
    spec = f"{i}/{n}"
    entry = (m.get("shards") or {}).get(spec)
    if entry and entry.get("key") == key and not force:
        log(f"[generate {spec}] unchanged (key {key}), kept")
        return entry["summary"]
    started = entry or ((m.get("shards_started") or {}).get(spec))
    if started and (started.get("key") != key or force):
        moved = move_aside(run_dir, [output_path(run_dir, i, n).name], f"generate-{i}-of-{n}")
        log(f"[generate {spec}] reruns; moved aside {', '.join(moved) or 'nothing'}")

    def start(mm):
        mm["shards_expected"] = n
        mm.setdefault("shards_started", {})[spec] = {"key": key}
    update_manifest(run_dir, start)
    summary = _call(stage, cfg, run_dir, show)

    def finish(mm):
        mm.setdefault("shards", {})[spec] = {"summary": summary, "key": key, "config": values,
                                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    update_manifest(run_dir, finish)
    return summary


def _merge_shards(cfg: RunConfig, run_dir: Path, log) -> None:
    """Every expected shard finished with the generate key now: record generate as done (their
    summaries summed), so `run` and `judge` reuse them."""
    m = read_manifest(run_dir)
    n = m.get("shards_expected")
    if not n:
        return
    key, values, inputs = stage_key(BY_NAME["generate"], cfg, m)
    if (m["stages"].get("generate") or {}).get("key") == key:
        return
    from thinksafe.generation import output_path
    shards = [(m.get("shards") or {}).get(f"{i}/{n}") for i in range(n)]
    if not all(s and s.get("key") == key for s in shards):
        return
    for i, s in enumerate(shards):      # a shard file cut or lost after its process finished
        if _lines(output_path(run_dir, i, n)) < s["summary"].get("records", 0):
            log(f"[generate] shard {i}/{n} is recorded as done but its file holds fewer records; "
                "not merged")
            return
    total: dict = {"shards": n}
    for s in shards:
        for k, v in s["summary"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = round(total.get(k, 0) + v, 1)
    log(f"[generate] {n} shards finished with this config: recorded as done")
    record_stage(run_dir, "generate", total, cfg, {"key": key, "config": values, "inputs": inputs})


def _exists(run_dir: Path, rel: str) -> bool:
    return any(run_dir.glob(rel)) if any(c in rel for c in "*?[") else (run_dir / rel).exists()


def _lines(path: Path) -> int:
    if not path.is_file():
        return 0
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


# ----------------------------------------------------------------------------- evaluate, report
def run_evaluate(cfg: RunConfig, run_dir: Path, show: bool = True) -> dict:
    """The base model and the trained one (``adapter/``, or ``model/`` for full fine-tuning); the
    flat numbers of each. Finished only once the trained model was evaluated too."""
    from dataclasses import replace

    from thinksafe.stages.evaluate import evaluate_model
    models = {"base": evaluate_model(cfg, run_dir, "base", None, show)}
    adapter, full = run_dir / "adapter", run_dir / "model"
    trained = None
    if (adapter / "adapter_config.json").exists():
        trained = (cfg, str(adapter))
    elif (full / "config.json").exists():          # train.method: full
        trained = (replace(cfg, model=replace(cfg.model, path=str(full))), None)
    if trained:
        models["thinksafe"] = evaluate_model(trained[0], run_dir, "thinksafe", trained[1], show)
    return {k: _eval_summary(m) for k, m in models.items()}


def _eval_summary(m: dict) -> dict:
    """The flat numbers of one model's metrics, with each real benchmark's headline rate."""
    from thinksafe.stages.report import headline
    out = {kk: v for kk, v in m.items() if not isinstance(v, dict)}
    out.update({name: headline(b) for name, b in (m.get("benchmarks") or {}).items()})
    return out


def run_report(cfg: RunConfig, run_dir: Path, show: bool = True, paper_model: str | None = None) -> dict:
    """summary.json, report.md (+ summary.csv for the real benchmarks) and pareto.png in run_dir."""
    from thinksafe.stages.report import report_run
    return report_run(cfg, run_dir, show, paper_model)


def generated_count(run_dir: Path) -> int:
    return sum(1 for _ in iter_jsonl(run_dir / "generated.jsonl", appended=True))

"""The run as a table of stages. Each stage says which config values it reads, which stages'
outputs it consumes and which files it writes; this module owns the run folder, the order and the
decision to keep or rerun (the keys: ``thinksafe.stagekeys``), for ``thinksafe run`` and
``thinksafe compare`` alike. No stage imports this module or another stage.

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

import os
import time
from importlib import import_module
from pathlib import Path

import yaml

from thinksafe.config import RunConfig, to_dict
from thinksafe.errors import ConfigError, ThinksafeError
from thinksafe.io import write_text
from thinksafe.runfolder import move_aside, move_aside_to, put_back, read_manifest, update_manifest
from thinksafe.stagekeys import Stage, fingerprint, hash_of, stage_key, stale_parts, why

GENERATE_READS = ("generate.steering", "generate.samples", "generate.temperature", "generate.top_p",
                  "generate.top_k", "generate.max_new_tokens")
EVAL_READS = ("evaluate.benchmarks", "evaluate.data_dir", "evaluate.n_harmful", "evaluate.n_reasoning",
              "evaluate.n_borderline", "evaluate.samples")


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
          ("eval",), "thinksafe.stages.evaluate:run",
          parts=(("eval/base", ()), ("eval/thinksafe", ("train",))),
          complete=lambda s: "thinksafe" in s),
    Stage("report", ("name", "seed", "model.path", "model.family"), ("evaluate", "dataset", "train"),
          ("eval", "dataset_stats.json", "train_summary.json"),
          ("summary.json", "summary.csv", "report.md", "pareto.png"), "thinksafe.stages.report:report_run"),
)
# Not part of `thinksafe run`: the GRPO baseline, in a folder of its own.
GRPO = Stage("grpo", ("seed", "model", "guard", "prompts", "grpo", "train.lora", "generate.max_new_tokens",
                      *EVAL_READS, "evaluate.max_new_tokens", "evaluate.temperature", "evaluate.top_p",
                      "evaluate.top_k"), (), (),
             ("adapter", "checkpoints", "grpo_steps.jsonl", "grpo_checks.jsonl", "grpo_summary.json",
              "grpo_log.jsonl", "tensorboard"), "thinksafe.stages.grpo:run")
# Not part of `thinksafe run`: the privileged-context search (compare's opsa_searched_context).
STEER = Stage("steer", ("seed", "model", "guard", "prompts", "generate", "steer", "evaluate.refusal_guard_kind",
                        "evaluate.refusal_guard_path", "evaluate.refusal_guard_max_input_tokens"), (), (),
              ("steer",), "thinksafe.stages.steer:run")
# Not part of `thinksafe run`: compare's perplexity of a training set under the base model.
PERPLEXITY = Stage("perplexity", ("model.path", "model.family", "model.dtype", "train.max_length"), ("dataset",),
                   ("sft.jsonl",), ("sft.ppl.base.jsonl", "sft.ppl.base.summary.json"),
                   "thinksafe.stages.perplexity:run")
BY_NAME = {s.name: s for s in (*STAGES, GRPO, STEER, PERPLEXITY)}
ORDER = [s.name for s in STAGES]
# ----------------------------------------------------------------------------- the manifest
def record_stage(run_dir: Path, stage: str, summary: dict, cfg: RunConfig | None = None,
                 key: dict | None = None, st: Stage | None = None) -> None:
    """Record a finished stage (``key``: key, config, inputs) with its compute, under the lock."""
    finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    entry = {"summary": summary, "finished_at": finished}
    if key:
        entry.update(key)
    st = st or BY_NAME.get(stage)
    run_id = f"{finished}/{time.time_ns()}/{os.getpid()}"      # a rerun on purpose is another output
    entry["fingerprint"] = fingerprint(st, Path(run_dir), entry.get("key", ""), run_id) if st else \
        hash_of({"finished": run_id, "stage": stage})
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


def prepare_run_dir(cfg: RunConfig) -> Path:
    """Create the run folder and save the config it runs with. Earlier stages made with another
    config are not refused here: each stage's key decides what reruns."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = to_dict(cfg)
    identity["generate"]["shard"] = "0/1"      # shards of one run share its folder
    write_text(run_dir / "config.yaml", yaml.safe_dump(identity, sort_keys=False))
    return run_dir


# ----------------------------------------------------------------------------- running stages
def _call(stage: Stage, cfg: RunConfig, run_dir: Path, show: bool):
    module, fn = stage.run.split(":")
    return getattr(import_module(module), fn)(cfg, run_dir, show=show, **dict(stage.args))


def ensure(name: str | Stage, cfg: RunConfig, run_dir: Path, show: bool = True, force: bool = False,
           log=print, check_upstream: bool = False) -> dict:
    """Run stage ``name`` (a name of the table, or a ``Stage`` variant) unless its recorded key is
    its key now (or ``force``); log which and why."""
    stage = BY_NAME[name] if isinstance(name, str) else name
    name = stage.name
    run_dir = Path(run_dir)
    if not _main_process():                 # `accelerate launch`: rank 0 keeps the books
        return _follow(stage, cfg, run_dir, show)
    if name == "generate":
        _merge_shards(cfg, run_dir, log)
    m = read_manifest(run_dir)
    if check_upstream:
        _check_upstream(stage, cfg, m)
    key, values, inputs = stage_key(stage, cfg, m, run_dir)
    entry = m["stages"].get(name)
    if entry and entry.get("key") == key and not force:
        log(f"[{name}] unchanged (key {key}), kept")
        return entry["summary"]
    reasons = ["forced"] if force and entry and entry.get("key") == key else why(stage, entry, values, inputs)
    moved, dest = _move_stale(stage, m, entry, values, inputs, run_dir, force)
    note = f"; moved aside {', '.join(moved)} into {run_dir / 'old'}" if moved else ""
    log(f"[{name}] {'runs' if reasons == ['not done yet'] else 'reruns'}: {'; '.join(reasons)}{note}")
    t0 = time.time()
    recorded = {"key": key, "config": values, "inputs": inputs}
    summary = _run_started(stage, cfg, run_dir, show, recorded, entry, moved, dest)
    if stage.complete is None or stage.complete(summary):
        for part, (psummary, pcfg) in _substages(summary, cfg).items():
            record_stage(run_dir, part, psummary, pcfg)
        record_stage(run_dir, name, summary, cfg, recorded, stage)
        log(f"[{name}] done in {time.time() - t0:.1f}s")
    else:
        log(f"[{name}] partly done in {time.time() - t0:.1f}s (not recorded as finished)")
    return summary


def _move_stale(stage: Stage, m: dict, entry: dict | None, values: dict, inputs: dict, run_dir: Path,
                force: bool) -> tuple[list[str], Path | None]:
    """Move aside what a run of this stage left behind that its rerun would not redo: the finished
    run's outputs, or an unfinished start's (all of them when forced)."""
    before = entry if entry and entry.get("key") else (m.get("started") or {}).get(stage.name)
    stale = stale_parts(stage, before, values, inputs, run_dir)
    if force:
        stale = list(stage.outputs if stage.parts is None else [p for p, _ in stage.parts])
    return move_aside_to(run_dir, stale, stage.name) if stale else ([], None)


def _run_started(stage: Stage, cfg: RunConfig, run_dir: Path, show: bool, recorded: dict,
                 entry: dict | None, moved: list[str], dest: Path | None) -> dict:
    """Record the start (the folder no longer holds the finished run's outputs once they were
    moved), run the stage; a user error before it wrote anything puts back what was moved."""
    name = stage.name

    def start(mm):
        mm.setdefault("started", {})[name] = recorded
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
        if moved and not any(_exists(run_dir, o) for o in stage.outputs):
            put_back(run_dir, moved, dest)
            update_manifest(run_dir, undo)
        raise
    return summary


def _substages(summary, cfg: RunConfig) -> dict:
    """Steps a stage ran that are recorded as stages of their own (compare's no_steering and
    teacher sets generate and judge): ``summary["substages"][name] = {"summary", "model"}`` ->
    {name: (summary, config)}; ``model`` (the teacher) sets the model the compute counts."""
    from dataclasses import replace
    parts = summary.pop("substages", None) if isinstance(summary, dict) else None
    out = {}
    for part, p in (parts or {}).items():
        pcfg = replace(cfg, model=replace(cfg.model, path=p["model"])) if p.get("model") else cfg
        out[part] = (p["summary"], pcfg)
    return out


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
        key = stage_key(stage, cfg, m, run_dir)[0]
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

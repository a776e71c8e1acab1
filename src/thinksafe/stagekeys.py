"""What a stage is, and what its cache key is made of: the config values it reads (minus the
values that only change speed, ``PERFORMANCE``), the fingerprints of the stages whose outputs it
consumes, and its variant's arguments. ``thinksafe.pipeline`` holds the table and runs it;
``thinksafe run`` and ``thinksafe compare`` both key their stages here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from thinksafe.config import RunConfig, to_dict
from thinksafe.runfolder import read_manifest


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
    # keyword arguments of the run function (a variant of a stage: which model evaluate evaluates,
    # which baseline set the set builder writes); part of the key when given
    args: tuple[tuple[str, object], ...] = ()


# Values that change speed or bookkeeping, not what a stage writes.
PERFORMANCE = {"model.batch_size", "model.generation", "model.gpu_memory_utilization",
               "model.tensor_parallel_size", "guard.batch_size", "guard.server_timeout",
               "generate.shard", "train.logging_steps", "train.report_to", "grpo.logging_steps",
               "grpo.save_steps",
               "cluster"}      # no stage reads it; listed so that it stays out of every key


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


# Values that are in no key while at the value runs recorded before the field existed had (a
# finished run stays "unchanged, kept").
OMIT_AT_DEFAULT = {"prompts.limit": None, "opsa.benign_context": "none", "opsa.forward_weight": 0.5,
                   "steer.flip": "safe"}
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


def hash_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_key(stage: Stage, cfg: RunConfig, manifest: dict, run_dir: Path | None = None) -> tuple[str, dict, dict]:
    """(key, config values, upstream fingerprints) from the upstream stages as recorded. An
    upstream ``FOLDER:stage`` is a stage of another run folder (relative to ``run_dir``): compare's
    baseline sets derive from ThinkSafe's ``../thinksafe:dataset``."""
    values = config_values(stage, cfg)
    inputs = {u: upstream_fingerprint(u, manifest, run_dir) for u in stage.after}
    what = {"stage": stage.name, "config": values, "inputs": inputs}
    if stage.args:
        what["args"] = dict(stage.args)
    return hash_of(what), values, inputs


def upstream_fingerprint(upstream: str, manifest: dict, run_dir: Path | None) -> str | None:
    """The recorded fingerprint of stage ``upstream`` (``FOLDER:stage``: in that run folder's manifest)."""
    folder, _, name = upstream.rpartition(":")
    if folder:
        if run_dir is None:
            return None
        manifest = read_manifest(Path(run_dir) / folder)
    return (manifest["stages"].get(name) or {}).get("fingerprint")


def why(stage: Stage, entry: dict | None, values: dict, inputs: dict) -> list[str]:
    """What differs from the recorded run of the stage (empty: nothing)."""
    if not entry or "key" not in entry:
        return ["not done yet"]
    old = entry.get("config") or {}
    out = [f"{k}: {old.get(k, '(unset)')} -> {v}" for k, v in values.items() if old.get(k) != v]
    out += [f"{k}: removed" for k in old if k not in values]
    out += [f"{u}'s output changed" for u, fp in inputs.items() if (entry.get("inputs") or {}).get(u) != fp]
    return out or ["key changed"]


def fingerprint(stage: Stage, run_dir: Path, key: str, finished: str) -> str:
    if stage.content and (run_dir / stage.content).is_file():
        h = hashlib.sha256()
        with open(run_dir / stage.content, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()[:16]
    return hash_of({"key": key, "finished": finished})


def stale_parts(stage: Stage, entry: dict | None, values: dict, inputs: dict, run_dir: Path) -> list[str]:
    """Outputs to move aside before the stage reruns."""
    started = entry or {}
    if not started.get("key"):
        return []
    config_changed = started.get("config") != values
    changed = {u for u, fp in inputs.items() if (started.get("inputs") or {}).get(u) != fp}
    parts = stage.parts if stage.parts is not None else [(o, ("config", *stage.after)) for o in stage.outputs]
    return [out for out, deps in parts
            if ("config" in deps and config_changed) or any(d in changed for d in deps)]

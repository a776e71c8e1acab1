"""Preflight: check everything the requested stages will need before any of them runs or writes.

``preflight(cfg, stages)`` resolves every model / guard / refusal-guard path or Hub id, guard kind
(and its fit to its use), prompt source, evaluation benchmark and its data file, LoRA target module
(against the module names of the model, read from its weight files' headers, never by loading
weights), training and GRPO setting, the run folder and the disk space for the planned generation.
It loads no weights and is offline-aware (``HF_HUB_OFFLINE=1``: the local Hugging Face cache only).
Each problem is one line naming the config key; ``require`` raises them together as a
``PreflightError`` (exit 2 at the command line). ``thinksafe check CONFIG`` prints the result and
what the run will do. The config's own values were validated when it loaded (``thinksafe.validation``).

The checks: ``models`` (models, guards, LoRA targets), ``inputs`` (prompts, generation, benchmarks);
``rollback.unchanged_on_failure`` undoes the bookkeeping of a command that fails before writing.
"""

from __future__ import annotations

import os
from pathlib import Path

from thinksafe.errors import ThinksafeError
from thinksafe.preflight import inputs, models
from thinksafe.preflight.base import Preflight, PreflightError, check_choice, split_key

def require(cfg, stages) -> Preflight:
    """``preflight``; a PreflightError listing every problem when there is one."""
    pf = preflight(cfg, stages)
    if pf.problems:
        raise PreflightError(pf.problems)
    return pf


def preflight(cfg, stages) -> Preflight:
    stages = list(stages)
    pf = Preflight(stages)
    pf.plan.append(("stages", ", ".join(stages)))
    _check_rounds(pf, cfg, stages)
    need_model = any(s in stages for s in ("generate", "train", "evaluate", "grpo")) or \
        ("judge" in stages and cfg.generate.max_attempts > 1)       # judge resamples with the model
    need_guard = "judge" in stages or "grpo" in stages
    names: list[str] = []
    if "evaluate" in stages or ("dataset" in stages and cfg.dataset.decontaminate):
        names = inputs.check_benchmarks(pf, cfg, "evaluate" in stages)
    if "evaluate" in stages and any(inputs.benchmark_kind(n) in ("organism", "safety") for n in names):
        need_guard = True
    model_dir = None
    if need_model:
        check_choice(pf, "model.family", cfg.model.family, models.families())
        models.check_backend(pf, "model.backend", cfg.model.backend)
        model_dir = models.check_model(pf, "model.path", cfg.model.path)
    if need_guard:
        models.check_guard(pf, cfg)
    if "evaluate" in stages and any(inputs.benchmark_kind(n) == "overrefusal" for n in names):
        models.check_refusal_guard(pf, cfg)
    if "generate" in stages or "grpo" in stages:
        inputs.check_generate(pf, cfg)
    if "train" in stages:
        _check_train(pf, cfg, model_dir)
    if "grpo" in stages:
        _check_grpo(pf, cfg, model_dir)
    _check_out(pf, cfg)
    return pf


def _check_train(pf: Preflight, cfg, model_dir: Path | None) -> None:
    """What the config's validation cannot know: the reporter installed, the LoRA targets and layers
    against the model's own modules."""
    from thinksafe.trainers.setup import check_reporter
    tc = cfg.train
    try:
        check_reporter(tc.report_to)
    except ThinksafeError as e:
        pf.problem(*split_key(str(e), "train"))
    if tc.method == "lora":
        models.check_lora(pf, tc.lora, model_dir, cfg.model.path)
    pf.plan.append(("train", f"{tc.method} / {tc.objective}, {tc.epochs:g} epoch(s), lr {tc.lr:g}"))


def _check_grpo(pf: Preflight, cfg, model_dir: Path | None) -> None:
    from thinksafe.stages.grpo import FORMATS
    check_choice(pf, "grpo.format_reward", cfg.grpo.format_reward, FORMATS)
    models.check_lora(pf, cfg.train.lora, model_dir, cfg.model.path)


def _check_out(pf: Preflight, cfg) -> None:
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        pf.problem("out", f"{cfg.out} is a file, not a folder")
        return
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        pf.problem("out", f"{cfg.out} cannot be written ({p} is not a writable folder)")
        return
    pf.plan.append(("out", f"{cfg.out}" + (" (exists: finished stages are kept)" if out.is_dir() else "")))


def describe(pf: Preflight) -> list[str]:
    """The lines `thinksafe check` prints: the plan, then notes, then problems (or "ready")."""
    width = max((len(k) for k, _ in pf.plan), default=0)
    lines = [f"{k.ljust(width)}  {v}" for k, v in pf.plan]
    lines += [f"note: {n}" for n in pf.notes]
    if pf.problems:
        lines += [f"problem: {p}" for p in pf.problems]
        lines.append(f"{len(pf.problems)} problem(s): fix them before `thinksafe run`")
    else:
        lines.append("ready: every asset the stages need is in place")
    return lines


def _check_rounds(pf: Preflight, cfg, stages: list[str]) -> None:
    """Iterative ThinkSafe (``thinksafe.rounds``): the rounds planned, and a round's student present."""
    if getattr(cfg, "rounds", 1) > 1:
        pf.plan.append(("rounds", f"{cfg.rounds} (round r >= 2 in <out>/round-r, generated by round r-1's "
                                  f"student, trained from {cfg.rounds_from})"))
    student = getattr(cfg, "student", None)
    if student and any(s in stages for s in ("generate", "judge")) and not Path(student).exists():
        pf.problem("student", f"{student} does not exist (the trained model this round generates with)")

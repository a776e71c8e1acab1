"""The pipeline's commands: one stage (generate ... report), all of them (run, demo), preflight alone
(check), and the studies built on them (compare, steer)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from thinksafe.cli.common import (
    ConfigArg,
    ForceOpt,
    FromOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    StagesOpt,
    checked,
    command,
    console,
    friendly,
    load,
    log,
    packaged_config,
)


def _stage(stage: str, config: Path, sets, out, quiet, force: bool = False):
    from thinksafe.pipeline import prepare_run_dir, run_stage
    cfg = load(config, sets, out)
    with checked(cfg, [stage]):
        run_dir = prepare_run_dir(cfg)
        summary = run_stage(stage, cfg, run_dir, show=not quiet, force=force, log=log)
    return run_dir, summary


def _print_stage(stage: str, run_dir: Path, summary) -> None:
    short = (", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict))
             if isinstance(summary, dict) else str(summary))
    console.print(f"[bold]{stage}[/bold] -> {run_dir}: {short}", highlight=False)


@command()
@friendly
def generate(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
             shard: Annotated[str | None, typer.Option(metavar="I/N", help="Generate the i-th of N disjoint "
                                                       "shards (one process per GPU); judge merges them.")] = None,
             force: ForceOpt = False):
    """The model answers the training prompts (harmful ones steered to refuse)."""
    sets = list(set_ or []) + ([f"generate.shard={shard}"] if shard else [])
    _print_stage("generate", *_stage("generate", config, sets, out, quiet, force))


@command()
@friendly
def judge(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
          force: ForceOpt = False,
          allow_incomplete: Annotated[bool, typer.Option(
              "--allow-incomplete", help="Judge a generation with missing records or shards (counted in "
                                         "the summary) instead of refusing.")] = False):
    """The guard judges each (original prompt, response); fail closed. Refuses an incomplete set of
    shards unless --allow-incomplete (or generate.allow_incomplete)."""
    sets = list(set_ or []) + (["generate.allow_incomplete=true"] if allow_incomplete else [])
    _print_stage("judge", *_stage("judge", config, sets, out, quiet, force))


@command()
@friendly
def dataset(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
            force: ForceOpt = False):
    """Keep complete, safe samples as the SFT set; count every drop."""
    _print_stage("dataset", *_stage("dataset", config, set_, out, quiet, force))


@command()
@friendly
def train(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
          force: ForceOpt = False):
    """LoRA SFT on the SFT set, loss on the response only."""
    _print_stage("train", *_stage("train", config, set_, out, quiet, force))


@command()
@friendly
def grpo(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
         force: ForceOpt = False):
    """Baseline: GRPO (TRL) with LoRA on the unsteered training prompts, reward = guard P(safe) +
    format. The guard runs in process, or served (`guard.server_url`, health-checked first)."""
    _print_stage("grpo", *_stage("grpo", config, set_, out, quiet, force))


@command()
@friendly
def evaluate(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
             force: ForceOpt = False):
    """Evaluate the base model and the trained adapter (if any) on `evaluate.benchmarks`.

    Benchmarks: organism, or the paper's (harmbench, strongreject, wildjailbreak, xstest, aime24,
    gsm8k, math500, gpqa_diamond; "paper" = all eight). Saved generations and verdicts are reused
    per benchmark (one more benchmark evaluates only that one); those made with other settings
    are moved into old/ and redone."""
    run_dir, models = _stage("evaluate", config, set_, out, quiet, force)
    console.print(f"[bold]evaluate[/bold] {', '.join(models)} -> {run_dir / 'eval'}; "
                  f"`thinksafe report {run_dir}` writes the table", highlight=False)


@command()
@friendly
def report(paths: Annotated[list[Path], typer.Argument(
               metavar="CONFIG_OR_RUNS", help="A YAML run config, or one or more run folders (each read "
                                              "with its config.yaml).")],
           set_: SetOpt = None, out: OutOpt = None,
           to: Annotated[Path | None, typer.Option(
               "--to", metavar="FOLDER", help="With several run folders: where the combined report goes "
                                              "(default runs/report).")] = None,
           paper_model: Annotated[str | None, typer.Option(
               "--paper-model", metavar="MODEL", help="Add the paper's published points for this model to "
                                                      "the table and pareto.png (e.g. Qwen3-4B; default: from "
                                                      "model.path; 'none' to leave them out).")] = None,
           quiet: QuietOpt = False):
    """Write summary.json, report.md, summary.csv and pareto.png; print the table.

    The paper's table (one row per run/tag) for the real benchmarks; the organism table for
    organism runs."""
    from thinksafe.errors import ConfigError
    from thinksafe.pipeline import prepare_run_dir
    from thinksafe.stages.report import report_run, report_runs
    if not paths:
        raise ConfigError("report needs a config file or one or more run folders")
    if all(p.is_dir() for p in paths):
        if set_ or out:
            raise ConfigError("--set and --out apply to a config file; with run folders the combined "
                              "report goes to --to")
        report_runs(paths, to, show=not quiet, paper_model=paper_model)
        return
    if to is not None:
        raise ConfigError("--to applies to run folders; a config's report goes into its run folder (--out)")
    paths = [packaged_config(p) if len(paths) == 1 else p for p in paths]
    if len(paths) > 1 or not paths[0].is_file():
        missing = [str(p) for p in paths if not p.exists()]
        raise ConfigError(f"not found: {', '.join(missing)}" if missing else
                          "report takes ONE config file, or one or more run folders")
    cfg = load(paths[0], set_, out)
    with checked(cfg, ["report"]):
        report_run(cfg, prepare_run_dir(cfg), show=not quiet, paper_model=paper_model)


@command()
@friendly
def run(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
        force: StagesOpt = None, from_: FromOpt = None):
    """All stages in order: generate, judge, dataset, train, evaluate, report.

    Each stage is kept when the config values it reads and its inputs are unchanged, and rerun
    otherwise (the log says which and why; old outputs are moved into old/, nothing is deleted)."""
    from thinksafe.pipeline import ORDER, run_all
    cfg = load(config, set_, out)
    with checked(cfg, ORDER):
        run_all(cfg, show=not quiet, force=force or (), start=from_, log=log)


@command()
@friendly
def check(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None,
          stages: Annotated[list[str] | None, typer.Option(
              "--stage", metavar="STAGE", help="Check for these stages only (repeatable; default: those "
                                               "of `run`).")] = None):
    """Preflight alone: check every asset and setting the stages need (no weights loaded, offline
    with HF_HUB_OFFLINE=1) and print what the run will do. Exit 2 when something is missing."""
    from thinksafe.errors import ConfigError
    from thinksafe.pipeline import BY_NAME, ORDER
    from thinksafe.preflight import describe, preflight
    cfg = load(config, set_, out)
    bad = [s for s in stages or [] if s not in BY_NAME]
    if bad:
        raise ConfigError(f"--stage: unknown stage {', '.join(bad)} (stages: {', '.join(BY_NAME)})")
    pf = preflight(cfg, stages or ORDER)
    for line in describe(pf):
        print(line)
    if not pf.ok:
        raise typer.Exit(2)


@command()
@friendly
def demo(seed: SeedOpt = None, out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False,
         force: StagesOpt = None, from_: FromOpt = None):
    """The whole method on the built-in model organism (CPU, no downloads): `thinksafe run` with the
    packaged demo.yaml."""
    from thinksafe.config import demo_config_path
    from thinksafe.pipeline import ORDER, run_all
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load(demo_config_path(), set_, out, seed)
    with checked(cfg, ORDER):
        run_all(cfg, show=not quiet, force=force or (), start=from_, log=log)
    console.print(f"summary: {Path(cfg.out) / 'summary.json'}", highlight=False)


@command()
@friendly
def compare(config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML config with a `compare:` "
                                                   "section, or the name of a packaged one "
                                                   "(compare-organism).")],
            set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False, seed: SeedOpt = None):
    """Several methods (base, thinksafe, baselines) on the same prompts and evaluation: one table."""
    from thinksafe.compare import run_compare, to_markdown
    table = run_compare(load(config, set_, out, seed), show=not quiet, log=log)
    console.print(to_markdown(table), highlight=False, markup=False)


@command()
@friendly
def steer(config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML config (or a packaged one: "
                                                 "demo).")],
          set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False, seed: SeedOpt = None):
    """Teacher flip rate and false-refusal rate of candidate privileged contexts (`steer:`); picks one."""
    from thinksafe.stages.steer import run_steer, to_markdown
    result = run_steer(load(config, set_, out, seed), show=not quiet, log=log)
    console.print(to_markdown(result), highlight=False, markup=False)

"""The `thinksafe` command line. Every stage reads one YAML config (+ --set overrides)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from thinksafe.config import demo_config_path
from thinksafe.errors import ThinksafeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="THINKSAFE: self-generated safety alignment for reasoning models.")
organism_app = typer.Typer(no_args_is_help=True, help="The model organism: build or check it.")
app.add_typer(organism_app, name="organism")
console = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config.")]
SetOpt = Annotated[list[str], typer.Option("--set", help="Override: key.sub=value (repeatable).")]
OutOpt = Annotated[str | None, typer.Option("--out", help="Run folder (overrides `out:`).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun this stage even if its config and inputs "
                                                        "are unchanged (old outputs moved into old/).")]


def _friendly(fn):
    """ThinksafeError -> one clear line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ThinksafeError as e:
            from rich.markup import escape
            for line in getattr(e, "problems", None) or [f"{type(e).__name__}: {e}"]:
                console.print(f"[red]error:[/red] {escape(line)}", highlight=False)  # `[...]` is text
            raise typer.Exit(2) from None
    return wrapper


def _load(config: Path | None, sets: list[str] | None, out: str | None = None, seed: int | None = None):
    from thinksafe.config import load_config
    config = packaged_config(config)
    overrides = list(sets or [])
    if out is not None:
        overrides.append(f"out={out}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    return load_config(config, overrides)


def _log(line: str) -> None:
    console.print(line, highlight=False, markup=False)


def packaged_config(config: Path | None) -> Path | None:
    """A config path, or the name of a packaged one (``qwen3-4b``, ``qwen3-4b.yaml``) when no such
    file exists here."""
    if config is None or Path(config).exists():
        return config
    name = Path(config).name
    for cand in (name, f"{name}.yaml"):
        packaged = Path(__file__).parent / "configs" / cand
        if packaged.is_file():
            return packaged
    return config


def _checked(cfg, stages):
    """Preflight (nothing written yet), then a context in which a failure leaves the run folder
    as it was."""
    from thinksafe.preflight import require, unchanged_on_failure
    require(cfg, stages)
    return unchanged_on_failure(Path(cfg.out))


def _stage(stage: str, config: Path, sets, out, quiet, force: bool = False) -> None:
    from thinksafe.pipeline import prepare_run_dir, run_stage
    cfg = _load(config, sets, out)
    with _checked(cfg, [stage]):
        run_dir = prepare_run_dir(cfg)
        summary = run_stage(stage, cfg, run_dir, show=not quiet, force=force, log=_log)
    if stage not in ("report",):
        console.print(f"[bold]{stage}[/bold] -> {run_dir}: {_short(summary)}", highlight=False)


def _short(summary) -> str:
    if isinstance(summary, dict):
        return ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict))
    return str(summary)


@app.command()
@_friendly
def generate(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
             shard: Annotated[str | None, typer.Option(help="i/N: generate the i-th of N disjoint shards "
                                                             "(one process per GPU); judge merges them.")] = None,
             force: ForceOpt = False):
    """The model answers the training prompts (harmful ones steered to refuse)."""
    _stage("generate", config, list(set_ or []) + ([f"generate.shard={shard}"] if shard else []), out, quiet,
           force)


@app.command()
@_friendly
def judge(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
          force: ForceOpt = False,
          allow_incomplete: Annotated[bool, typer.Option(
              "--allow-incomplete", help="Judge a generation with missing records or shards (counted in "
                                         "the summary) instead of refusing.")] = False):
    """The guard judges each (original prompt, response); fail closed. Refuses an incomplete set of
    shards unless --allow-incomplete (or generate.allow_incomplete)."""
    sets = list(set_ or []) + (["generate.allow_incomplete=true"] if allow_incomplete else [])
    _stage("judge", config, sets, out, quiet, force)


@app.command()
@_friendly
def dataset(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
            force: ForceOpt = False):
    """Keep complete, safe samples as the SFT set; count every drop."""
    _stage("dataset", config, set_, out, quiet, force)


@app.command()
@_friendly
def train(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
          force: ForceOpt = False):
    """LoRA SFT on the SFT set, loss on the response only."""
    _stage("train", config, set_, out, quiet, force)


@app.command()
@_friendly
def grpo(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
         force: ForceOpt = False):
    """Baseline: GRPO (TRL) with LoRA on the unsteered training prompts, reward = guard P(safe) +
    format. The guard runs in process, or served (`guard.server_url`, health-checked first)."""
    _stage("grpo", config, set_, out, quiet, force)


@app.command()
@_friendly
def evaluate(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
             force: ForceOpt = False):
    """Evaluate the base model and the trained adapter (if any) on `evaluate.benchmarks`.

    Benchmarks: organism, or the paper's (harmbench, strongreject, wildjailbreak, xstest, aime24,
    gsm8k, math500, gpqa_diamond; "paper" = all eight). Saved generations and verdicts are reused
    per benchmark (one more benchmark evaluates only that one); those made with other settings
    are moved into old/ and redone."""
    from thinksafe.pipeline import prepare_run_dir, run_stage
    cfg = _load(config, set_, out)
    with _checked(cfg, ["evaluate"]):
        run_dir = prepare_run_dir(cfg)
        models = run_stage("evaluate", cfg, run_dir, show=not quiet, force=force, log=_log)
    console.print(f"[bold]evaluate[/bold] {', '.join(models)} -> {run_dir / 'eval'}; "
                  f"`thinksafe report {run_dir}` writes the table", highlight=False)


@app.command()
@_friendly
def report(paths: Annotated[list[Path], typer.Argument(
               help="A YAML run config, or one or more run folders (each read with its config.yaml).")],
           set_: SetOpt = None,
           out: Annotated[str | None, typer.Option(
               "--out", help="With a config: the run folder (overrides `out:`). With several run "
                             "folders: where the combined report goes (default runs/report).")] = None,
           paper_model: Annotated[str | None, typer.Option(
               "--paper-model", help="Add the paper's published points for this model to the table "
                                     "and pareto.png (e.g. Qwen3-4B; default: from model.path; "
                                     "'none' to leave them out).")] = None,
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
        if set_:
            raise ConfigError("--set applies to a config file, not to run folders")
        report_runs(paths, Path(out) if out else None, show=not quiet, paper_model=paper_model)
        return
    paths = [packaged_config(p) if len(paths) == 1 else p for p in paths]
    if len(paths) > 1 or not paths[0].is_file():
        missing = [str(p) for p in paths if not p.exists()]
        raise ConfigError(f"not found: {', '.join(missing)}" if missing else
                          "report takes ONE config file, or one or more run folders")
    cfg = _load(paths[0], set_, out)
    with _checked(cfg, ["report"]):
        report_run(cfg, prepare_run_dir(cfg), show=not quiet, paper_model=paper_model)


@app.command()
@_friendly
def perplexity(data: Annotated[Path, typer.Argument(help="JSONL with prompt/response rows (e.g. a run's sft.jsonl).")],
               model: Annotated[str, typer.Option("--model", help="HF id, local folder, or 'organism'.")],
               adapter: Annotated[str | None, typer.Option("--adapter", help="A PEFT adapter folder.")] = None,
               family: Annotated[str, typer.Option("--family", help="Chat-template family: qwen3 | "
                                                   "r1_distill | organism | generic.")] = "generic",
               out: Annotated[Path | None, typer.Option("--out", help="Per-example JSONL (default: next "
                                                        "to DATA); the summary goes to <out>.summary.json.")] = None,
               batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
               max_length: Annotated[int | None, typer.Option("--max-length", help="Skip (and count) "
                                                              "longer examples.")] = None,
               limit: Annotated[int | None, typer.Option("--limit", help="Only the first N rows.")] = None,
               quiet: QuietOpt = False):
    """Perplexity of an SFT set's responses under a model (distribution shift).

    exp(mean NLL) of the response tokens, masked exactly as in training; per-example values go to
    a JSONL file, the summary to <out>.summary.json and stdout."""
    import json

    from thinksafe.stages.perplexity import perplexity as run_ppl
    s = run_ppl(data, model, adapter=adapter, family=family, out=out, batch_size=batch_size,
                max_length=max_length, limit=limit, show=not quiet)
    print(json.dumps(s, indent=2))


@app.command()
@_friendly
def merge(path: Annotated[Path, typer.Argument(help="A run folder (its adapter/) or an adapter folder.")],
          out: Annotated[Path, typer.Option("--out", help="Folder for the merged model "
                                            "(safetensors + tokenizer).")],
          base: Annotated[str | None, typer.Option("--base", help="Base model (default: the run's model.path, "
                                                   "else the adapter's base_model_name_or_path).")] = None,
          dtype: Annotated[str, typer.Option("--dtype", help="auto (the base's) | float32 | bfloat16 | "
                                             "float16.")] = "auto",
          force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out.")] = False):
    """Merge a trained LoRA adapter into its base model (merge_and_unload) -> a standalone model folder."""
    from thinksafe.stages.merge import merge as run_merge
    s = run_merge(path, out, base=base, dtype=dtype, force=force)
    console.print(f"[bold]merge[/bold] -> {s['out']}: base={s['base']}, params={s['params']}, "
                  f"dtype={s['dtype']}", highlight=False)


StagesOpt = Annotated[list[str] | None, typer.Option(
    "--force", help="Rerun this stage on purpose (repeatable), and so whatever uses its output.")]
FromOpt = Annotated[str | None, typer.Option("--from", help="Rerun this stage and every stage after it.")]


@app.command()
@_friendly
def run(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
        force: StagesOpt = None, from_: FromOpt = None):
    """All stages in order: generate, judge, dataset, train, evaluate, report.

    Each stage is kept when the config values it reads and its inputs are unchanged, and rerun
    otherwise (the log says which and why; old outputs are moved into old/, nothing is deleted)."""
    from thinksafe.pipeline import ORDER, run_all
    cfg = _load(config, set_, out)
    with _checked(cfg, ORDER):
        run_all(cfg, show=not quiet, force=force or (), start=from_, log=_log)


@app.command()
@_friendly
def check(config: ConfigArg, set_: SetOpt = None, out: OutOpt = None,
          stages: Annotated[list[str] | None, typer.Option(
              "--stage", help="Check for these stages only (repeatable; default: those of `run`).")] = None):
    """Preflight alone: check every asset and setting the stages need (no weights loaded, offline
    with HF_HUB_OFFLINE=1) and print what the run will do. Exit 2 when something is missing."""
    from thinksafe.pipeline import BY_NAME, ORDER
    from thinksafe.preflight import describe, preflight
    cfg = _load(config, set_, out)
    bad = [s for s in stages or [] if s not in BY_NAME]
    if bad:
        from thinksafe.errors import ConfigError
        raise ConfigError(f"--stage: unknown stage {', '.join(bad)} (stages: {', '.join(BY_NAME)})")
    pf = preflight(cfg, stages or ORDER)
    for line in describe(pf):
        print(line)
    if not pf.ok:
        raise typer.Exit(2)


@app.command()
@_friendly
def demo(seed: Annotated[int, typer.Option(help="Seed for prompts, sampling and training.")] = 0,
         out: Annotated[str, typer.Option(help="Run folder.")] = "runs/demo",
         set_: SetOpt = None, quiet: QuietOpt = False, force: StagesOpt = None, from_: FromOpt = None):
    """The whole method on the built-in model organism (CPU, no downloads)."""
    from thinksafe.pipeline import run_all
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = _load(demo_config_path(), set_, out, seed)
    with _checked(cfg, ["generate", "judge", "dataset", "train", "evaluate", "report"]):
        run_all(cfg, show=not quiet, force=force or (), start=from_, log=_log)
    console.print(f"summary: {Path(cfg.out) / 'summary.json'}", highlight=False)


@organism_app.command("build")
@_friendly
def organism_build(out: Annotated[Path | None, typer.Option(help="Where to write base/, guard/ and teacher/ "
                                                                 "(default: the package's bundled copy).")] = None,
                   seed: Annotated[int, typer.Option(help="World seed.")] = 0,
                   tiny: Annotated[bool, typer.Option(help="A tiny, fast, low-quality build (tests).")] = False,
                   verify: Annotated[bool, typer.Option(help="Build into a temporary folder and check that it "
                                                              "behaves like the bundled organism (and say "
                                                              "whether the bytes match).")] = False,
                   teacher_only: Annotated[bool, typer.Option(help="Only (re)build teacher/, with the tokenizer "
                                                                    "of the base already in the folder.")] = False,
                   guard_only: Annotated[bool, typer.Option(help="Only (re)build guard/, from the base already "
                                                                  "in the folder (the guard a full build makes).")] = False):
    """Rebuild the organism (world, tokenizer, base, guard, teacher) from scratch, deterministically."""
    import tempfile
    from dataclasses import asdict, replace

    from thinksafe.organism import organism_dir, update_manifest
    from thinksafe.organism.build import TINY, BuildSpec, build, build_guard_into, build_teacher_into
    from thinksafe.organism.teacher import TINY_TEACHER, TeacherSpec
    spec = replace(TINY if tiny else BuildSpec(), seed=seed)
    tspec = replace(TINY_TEACHER if tiny else TeacherSpec(), seed=seed)
    log = lambda s: console.print(s, highlight=False)  # noqa: E731
    if teacher_only or guard_only:
        if verify or (teacher_only and guard_only):
            raise typer.BadParameter("--teacher-only, --guard-only and --verify do not go together")
        target = out or organism_dir()
        if not (Path(target) / "base" / "config.json").is_file():
            raise typer.BadParameter(f"no base organism in {target} to take the tokenizer from")
        which = "teacher" if teacher_only else "guard"
        info = build_teacher_into(target, tspec, log) if teacher_only else build_guard_into(target, spec, log)
        update_manifest(target, {**info, **({"spec": asdict(spec)} if guard_only else {})}, create=False)
        console.print(f"{which} built in {info[which + '_seconds']}s -> {Path(target) / which}", highlight=False)
        return
    target = Path(tempfile.mkdtemp(prefix="organism-")) if verify else (out or organism_dir())
    m = build(target, spec, log=log, teacher_spec=tspec, check=not tiny)
    console.print(f"organism built in {m['seconds']}s -> {target}", highlight=False)
    if m.get("check"):
        _print_targets(m["check"]["targets"], m["check"])
    if verify:
        _verify_against(target, out or organism_dir(), m)


def _verify_against(new: Path, ref: Path, manifest: dict) -> None:
    """Behaviour first (the organism check's numbers within tolerance), then bytes."""
    from thinksafe.organism import read_manifest
    from thinksafe.organism.build import compare_builds
    from thinksafe.organism.check import VERIFY_TOLERANCE, compare_behaviour
    ref_check = read_manifest(ref).get("check")
    if not ref_check:
        raise typer.BadParameter(f"{ref}/organism.json records no organism check to compare with")
    diffs = compare_builds(new, ref)
    console.print("bytes: identical to the reference build" if not diffs else
                  f"bytes: {len(diffs)} files differ from the reference build ({', '.join(diffs[:6])})",
                  highlight=False)
    off = compare_behaviour(manifest["check"], ref_check)
    if off:
        console.print(f"[red]behaviour differs by more than {VERIFY_TOLERANCE}:[/red] {'; '.join(off)}")
        raise typer.Exit(1)
    console.print(f"behaviour: every checked rate within {VERIFY_TOLERANCE} of the reference build",
                  highlight=False)


@organism_app.command("check")
@_friendly
def organism_check(seed: Annotated[int, typer.Option(help="Evaluation seed.")] = 0,
                   out: Annotated[str, typer.Option(help="Run folder.")] = "runs/organism-check",
                   folder: Annotated[Path | None, typer.Option(help="An organism build (default: the bundled "
                                                               "one, or THINKSAFE_ORGANISM).")] = None,
                   strict: Annotated[bool, typer.Option(help="Exit 1 when a design target is missed.")] = False,
                   record: Annotated[bool, typer.Option(help="Write the result into the build's organism.json "
                                                        "(what `organism build --verify` compares with).")] = False):
    """Measure the base organism on held-out splits (no training) against its design targets."""
    from thinksafe.organism import organism_dir, update_manifest
    from thinksafe.organism.check import check, measure, summary
    from thinksafe.stages.report import print_table
    folder = folder or organism_dir()
    m = measure(folder, out, seed, show=True)
    print_table({"base": m})
    rows = check(m)
    _print_targets(rows, m)
    if record:
        console.print(f"recorded in {update_manifest(folder, {'check': summary(m)})}", highlight=False)
    if strict and not all(r["ok"] for r in rows):
        raise typer.Exit(1)


def _print_targets(rows: list[dict], m: dict) -> None:
    from rich.table import Table
    t = Table(title="organism design targets (base, held-out split)")
    for col in ("property", "value", "target", ""):
        t.add_column(col)
    for r in rows:
        v = r["value"]
        t.add_row(r["property"], f"{v:.3f}" if isinstance(v, float) else str(v), r["band"],
                  "ok" if r["ok"] else "MISSED")
    console.print(t)
    cats = Table(title="by hazard category (oracle)")
    for col in ("category", "harmful plain", "harmful adversarial", "steered refusal"):
        cats.add_column(col, justify="right")
    groups, steer = m.get("harmful_by_group") or {}, m.get("steered_refusal_by_category") or {}
    for c in sorted(steer, key=lambda c: int(c[1:]) if c[1:].isdigit() else 99):
        cell = lambda g: f"{groups[g]['oracle']:.2f} (n={groups[g]['n']})" if g in groups else "–"  # noqa: E731
        cats.add_row(c, cell(f"{c}/plain"), cell(f"{c}/adversarial"),
                     f"{steer[c]['rate']:.2f} (n={steer[c]['n']})")
    console.print(cats)


@app.command()
@_friendly
def compare(config: Annotated[Path, typer.Argument(help="YAML config with a `compare:` section, or the "
                                                   "name of a packaged one (compare-organism.yaml).")],
            set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
            seed: Annotated[int | None, typer.Option(help="Overrides `seed:`.")] = None):
    """Several methods (base, thinksafe, baselines) on the same prompts and evaluation: one table."""
    from thinksafe.compare import run_compare
    if not config.exists() and (Path(__file__).parent / "configs" / config.name).is_file():
        config = Path(__file__).parent / "configs" / config.name
    table = run_compare(_load(config, set_, out, seed), show=not quiet, log=_log)
    from thinksafe.compare import to_markdown
    console.print(to_markdown(table), highlight=False, markup=False)


@app.command()
@_friendly
def view(runs: Annotated[list[Path], typer.Argument(help="One or more run folders (a compare folder "
                                                    "brings its methods' runs).")],
         host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
         port: Annotated[int, typer.Option(help="Port.")] = 8765,
         export: Annotated[Path | None, typer.Option("--export", help="Write a static bundle (HTML + JSON) "
                                                     "into this folder instead of serving.")] = None):
    """A read-only web viewer of runs: stages and report, training samples with facets and search,
    base vs trained side by side. Harmful text stays hidden until clicked."""
    if export is not None:
        from thinksafe.viewer.bundle import export_bundle
        s = export_bundle(runs, export)
        console.print(f"[bold]view --export[/bold] -> {s['out']}: {s['samples']} samples, "
                      f"{s['eval_pairs']} evaluation pairs; open {s['out'] / 'index.html'}", highlight=False)
        return
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        from thinksafe.errors import ConfigError
        raise ConfigError(f"thinksafe view needs Starlette and uvicorn ({e.name} is missing): "
                          "pip install 'thinksafe[view]'") from None
    from thinksafe.viewer.server import serve
    serve(runs, host=host, port=port, log=_log)


@app.command("export")
@_friendly
def export_cmd(run: Annotated[Path, typer.Argument(help="A finished run folder.")],
               out: Annotated[Path, typer.Option("--out", help="Folder for dataset/ and adapter/.")],
               push_to_hub: Annotated[str | None, typer.Option(
                   "--push-to-hub", help="Upload to this Hub repo id (dataset REPO, model REPO-adapter).")] = None,
               private: Annotated[bool, typer.Option(help="Create the Hub repos private.")] = False,
               license: Annotated[str, typer.Option(help="License id for the cards (the base model's "
                                                    "terms apply to its outputs).")] = "other"):
    """The SFT set as a Hub-ready dataset (parquet + dataset card) and the adapter with a model card,
    with provenance numbers from the run; optionally pushed to the Hub."""
    from thinksafe.viewer.export import export_run, push
    s = export_run(run, out, license=license)
    console.print(f"[bold]export[/bold] -> {s['out']}: {s['rows']} rows"
                  f"{', adapter' if s['adapter'] else ''}", highlight=False)
    if push_to_hub:
        for line in push(s, push_to_hub, private=private):
            console.print(line, highlight=False)


@app.command()
@_friendly
def steer(config: Annotated[Path, typer.Argument(help="YAML config (or a packaged one: demo.yaml).")],
          set_: SetOpt = None, out: OutOpt = None, quiet: QuietOpt = False,
          seed: Annotated[int | None, typer.Option(help="Overrides `seed:`.")] = None):
    """Teacher flip rate and false-refusal rate of candidate privileged contexts (`steer:`); picks one."""
    from thinksafe.stages.steer import run_steer, to_markdown
    if not config.exists() and (Path(__file__).parent / "configs" / config.name).is_file():
        config = Path(__file__).parent / "configs" / config.name
    result = run_steer(_load(config, set_, out, seed), show=not quiet, log=_log)
    console.print(to_markdown(result), highlight=False, markup=False)


def _quiet_libraries() -> None:
    """Keep the console for our own progress bars: no per-load bars or info logs from HF."""
    import warnings
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import datasets
    datasets.disable_progress_bars()


def _print_version(value: bool) -> None:
    if value:
        from thinksafe import __version__
        typer.echo(f"thinksafe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """THINKSAFE: self-generated safety alignment for reasoning models."""


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to continue")
        sys.exit(130)


if __name__ == "__main__":
    main()

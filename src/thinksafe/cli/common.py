"""What every command shares: the Typer apps, the one help text of each common flag, config loading and
the one-line error handling. A flag means one thing on every command: ``--out`` the run folder,
``--force`` rerun stages, ``--seed`` the config's run ``seed``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup

from thinksafe.errors import ThinksafeError

OUT_HELP = "The run folder (overrides the config's `out:`)."
FORCE_HELP = ("Rerun this stage even when its config values and inputs are unchanged (old outputs are "
              "moved into old/).")
FORCE_STAGES_HELP = ("Rerun this stage even when its config values and inputs are unchanged, and so whatever "
                     "uses its output (repeatable; old outputs are moved into old/).")
SEED_HELP = "The run's seed: prompts, sampling, training and evaluation (overrides the config's `seed:`)."


def _no_type(ctx) -> None:
    return None


class _PlainHelp:
    """Help without type labels: a flag shows no metavar and no default, a value its declared
    metavar (else its name in capitals), an argument no type, and the usage line names arguments
    as NAME / [NAME]."""

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False):
                p.metavar, p.show_default = "", False
            elif p.metavar is None:
                p.metavar = (p.name or "").upper()
            if isinstance(p, TyperArgument):
                p.display_type_rich = _no_type
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                pieces.append((p.metavar if p.required else f"[{p.metavar}]") + ("..." if p.nargs != 1 else ""))
        if isinstance(self, TyperGroup):
            pieces.append(self.subcommand_metavar)
        return pieces


class Command(_PlainHelp, TyperCommand):
    pass


class Group(_PlainHelp, TyperGroup):
    pass


app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                  help="THINKSAFE: self-generated safety alignment for reasoning models.")
organism_app = typer.Typer(cls=Group, no_args_is_help=True, help="The model organism: build or check it.")
app.add_typer(organism_app, name="organism")
command = functools.partial(app.command, cls=Command)
organism_command = functools.partial(organism_app.command, cls=Command)
console = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML run config (or the name of a "
                                           "packaged one, e.g. qwen3-4b).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                  help="Override: key.sub=value (repeatable).")]
OutOpt = Annotated[str | None, typer.Option("--out", metavar="FOLDER", help=OUT_HELP)]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
ForceOpt = Annotated[bool, typer.Option("--force", help=FORCE_HELP)]
StagesOpt = Annotated[list[str] | None, typer.Option("--force", metavar="STAGE", help=FORCE_STAGES_HELP)]
FromOpt = Annotated[str | None, typer.Option("--from", metavar="STAGE",
                                             help="Rerun this stage and every stage after it.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", metavar="N", help=SEED_HELP)]


def friendly(fn):
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


def packaged_config(config: Path | None) -> Path | None:
    """A config path, or the name of a packaged one (``qwen3-4b``, ``qwen3-4b.yaml``) when no such
    file exists here."""
    if config is None or Path(config).exists():
        return config
    name = Path(config).name
    for cand in (name, f"{name}.yaml"):
        packaged = Path(__file__).parents[1] / "configs" / cand
        if packaged.is_file():
            return packaged
    return config


def load(config: Path | None, sets: list[str] | None, out: str | None = None, seed: int | None = None):
    """The config with ``--set`` overrides, then ``--out`` and ``--seed`` (None = the config's)."""
    from thinksafe.config import load_config
    overrides = list(sets or [])
    if out is not None:
        overrides.append(f"out={out}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    return load_config(packaged_config(config), overrides)


def log(line: str) -> None:
    console.print(line, highlight=False, markup=False)


def checked(cfg, stages):
    """Preflight (nothing written yet), then a context in which a failure leaves the run folder
    as it was."""
    from thinksafe.preflight import require
    from thinksafe.preflight.rollback import unchanged_on_failure
    require(cfg, stages)
    return unchanged_on_failure(Path(cfg.out))


def given(**kwargs) -> dict:
    """The options the user gave (None = not given: the callee's own default applies)."""
    return {k: v for k, v in kwargs.items() if v is not None}

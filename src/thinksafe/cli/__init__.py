"""The `thinksafe` command line. Every pipeline command reads one YAML config (+ --set overrides);
the commands live in ``stages`` (the pipeline), ``tools`` (around a run) and ``organism``."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from thinksafe.cli import organism, stages, tools
from thinksafe.cli.common import app, console

COMMANDS = (stages, tools, organism)   # modules whose import registers the commands on `app`


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

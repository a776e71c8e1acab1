"""Commands around a run: perplexity of a data set, merging an adapter, the viewer and the export.
Their outputs are files or model folders, never a run folder: each names its own (``--to``,
``--output-file``, ``--export``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thinksafe.cli.common import QuietOpt, command, console, friendly, given, log


@command()
@friendly
def perplexity(data: Annotated[Path, typer.Argument(metavar="DATA", help="JSONL with prompt/response rows "
                                                    "(e.g. a run's sft.jsonl).")],
               model: Annotated[str, typer.Option("--model", metavar="MODEL",
                                                  help="HF id, local folder, or 'organism'.")],
               adapter: Annotated[str | None, typer.Option("--adapter", metavar="FOLDER",
                                                           help="A PEFT adapter folder.")] = None,
               family: Annotated[str | None, typer.Option(
                   "--family", metavar="FAMILY", help="Chat-template family: qwen3 | r1_distill | organism | "
                                                      "generic (default: generic).")] = None,
               output_file: Annotated[Path | None, typer.Option(
                   "--output-file", metavar="FILE", help="Per-example JSONL (default: next to DATA); the "
                                                         "summary goes to <file>.summary.json.")] = None,
               batch_size: Annotated[int | None, typer.Option("--batch-size", metavar="N",
                                                              help="Examples per batch.")] = None,
               max_length: Annotated[int | None, typer.Option("--max-length", metavar="TOKENS",
                                                              help="Skip (and count) longer examples.")] = None,
               limit: Annotated[int | None, typer.Option("--limit", metavar="N",
                                                         help="Only the first N rows.")] = None,
               quiet: QuietOpt = False):
    """Perplexity of an SFT set's responses under a model (distribution shift).

    exp(mean NLL) of the response tokens, masked exactly as in training; per-example values go to
    a JSONL file, the summary to <file>.summary.json and stdout."""
    import json

    from thinksafe.stages.perplexity import perplexity as run_ppl
    s = run_ppl(data, model, show=not quiet, **given(adapter=adapter, family=family, out=output_file,
                                                     batch_size=batch_size, max_length=max_length, limit=limit))
    print(json.dumps(s, indent=2))


@command()
@friendly
def merge(path: Annotated[Path, typer.Argument(metavar="RUN_OR_ADAPTER", help="A run folder (its adapter/) "
                                               "or an adapter folder.")],
          to: Annotated[Path, typer.Option("--to", metavar="FOLDER", help="Folder for the merged model "
                                           "(safetensors + tokenizer).")],
          base: Annotated[str | None, typer.Option("--base", metavar="MODEL", help="Base model (default: the "
                                                   "run's model.path, else the adapter's "
                                                   "base_model_name_or_path).")] = None,
          dtype: Annotated[str | None, typer.Option("--dtype", metavar="DTYPE", help="auto (the base's) | "
                                                    "float32 | bfloat16 | float16 (default: auto).")] = None,
          overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --to.")] = False):
    """Merge a trained LoRA adapter into its base model (merge_and_unload) -> a standalone model folder."""
    from thinksafe.stages.merge import merge as run_merge
    s = run_merge(path, to, overwrite=overwrite, **given(base=base, dtype=dtype))
    console.print(f"[bold]merge[/bold] -> {s['out']}: base={s['base']}, params={s['params']}, "
                  f"dtype={s['dtype']}", highlight=False)


@command()
@friendly
def view(runs: Annotated[list[Path], typer.Argument(metavar="RUNS", help="One or more run folders (a "
                                                    "compare folder brings its methods' runs).")],
         host: Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address to bind (this machine only "
                                           "unless changed).")] = "127.0.0.1",
         port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port.")] = 8765,
         export: Annotated[Path | None, typer.Option("--export", metavar="FOLDER", help="Write a static "
                                                     "bundle (HTML + JSON) into this folder instead of "
                                                     "serving.")] = None):
    """A read-only web viewer of runs: stages and report, training samples with facets and search,
    base vs trained side by side. Harmful text stays hidden until clicked."""
    if export is not None:
        from thinksafe.viewer.bundle import export_bundle
        s = export_bundle(runs, export)
        console.print(f"[bold]view --export[/bold] -> {s['out']}: {s['samples']} samples, "
                      f"{s['eval_pairs']} evaluation pairs; open {s['out'] / 'index.html'}", highlight=False)
        return
    import importlib.util
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        from thinksafe.errors import ConfigError
        raise ConfigError(f"thinksafe view needs Starlette and uvicorn ({missing[0]} is missing): "
                          "pip install 'thinksafe[view]'")
    from thinksafe.viewer.server import serve
    serve(runs, host=host, port=port, log=log)


@command("export")
@friendly
def export_cmd(run: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder.")],
               to: Annotated[Path, typer.Option("--to", metavar="FOLDER", help="Folder for dataset/ and "
                                                "adapter/.")],
               push_to_hub: Annotated[str | None, typer.Option(
                   "--push-to-hub", metavar="REPO", help="Upload to this Hub repo id (dataset REPO, model "
                                                         "REPO-adapter).")] = None,
               private: Annotated[bool, typer.Option("--private", help="Create the Hub repos private.")] = False,
               license: Annotated[str | None, typer.Option("--license", metavar="LICENSE", help="License id for the cards "
                                                           "(default: other; the base model's terms apply "
                                                           "to its outputs).")] = None):
    """The SFT set as a Hub-ready dataset (parquet + dataset card) and the adapter with a model card,
    with provenance numbers from the run; optionally pushed to the Hub."""
    from thinksafe.viewer.export import export_run, push
    s = export_run(run, to, **given(license=license))
    console.print(f"[bold]export[/bold] -> {s['out']}: {s['rows']} rows"
                  f"{', adapter' if s['adapter'] else ''}", highlight=False)
    if push_to_hub:
        for line in push(s, push_to_hub, private=private):
            console.print(line, highlight=False)

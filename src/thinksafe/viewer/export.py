"""`thinksafe export`: a run's SFT set as a Hub-ready dataset and its adapter with a model card.

``OUT/dataset/``: ``data/train-00000-of-00001.parquet`` (small row groups, streamed from
``sft.jsonl``) and ``README.md``, a dataset card with YAML metadata and a body saying how the data
was made; every number in it is read from the run (``dataset_stats.json``, ``manifest.json``,
``config.yaml``). ``OUT/adapter/``: the run's ``adapter/`` files and a model card (base model,
method, training settings from ``train_summary.json``, the evaluation table from
``summary.json`` with its limit/partial flags, the guard used as judge).

``push`` uploads both folders with ``huggingface_hub`` (dataset repo ``REPO``, model repo
``REPO-adapter``); auth and network failures are one-line errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from thinksafe.errors import ConfigError, DataError, ThinksafeError
from thinksafe.io import iter_jsonl, write_text

ROW_GROUP = 256
SKIP_ADAPTER_FILES = {"training_args.bin", "README.md"}
PARQUET = "data/train-00000-of-00001.parquet"


class HubError(ThinksafeError):
    pass


def _json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def size_category(n: int) -> str:
    for hi, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                     (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < hi:
            return name
    return "n>10M"


def write_parquet(src: Path, dest: Path) -> int:
    """sft.jsonl -> parquet, ROW_GROUP rows at a time (never the whole set in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pa.schema([(k, pa.string()) for k in ("id", "prompt", "response", "label", "category", "steering")])
    dest.parent.mkdir(parents=True, exist_ok=True)
    n, batch = 0, []
    with pq.ParquetWriter(str(dest), schema) as w:
        def flush():
            if batch:
                w.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=ROW_GROUP)
                batch.clear()
        for d in iter_jsonl(src):
            batch.append({k: (None if d.get(k) is None else str(d.get(k))) for k in schema.names})
            n += 1
            if len(batch) >= ROW_GROUP:
                flush()
        flush()
    return n


def _cfg(run: Path):
    from thinksafe.stages.report import run_config
    return run_config(run)


def _sampling(cfg) -> dict:
    from thinksafe.families import get_family
    from thinksafe.runtime import sampling
    p = sampling(cfg.generate, get_family(cfg.model.family), cfg.seed, cfg.generate.max_new_tokens)
    return {"temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k,
            "max_new_tokens": p.max_new_tokens, "seed": p.seed, "samples per prompt": cfg.generate.samples,
            "max attempts": cfg.generate.max_attempts}


def _stage(manifest: dict, name: str) -> dict:
    return (manifest.get("stages") or {}).get(name) or {}


def _fm(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join("–" if v is None else str(v) for v in r) + " |" for r in rows]
    return out


def dataset_card(run: Path, n_rows: int, license: str = "other") -> str:
    cfg = _cfg(run)
    stats = _json(run / "dataset_stats.json") or {}
    manifest = _json(run / "manifest.json") or {}
    src = cfg.prompts.source
    meta = {"license": license, "language": ["en"], "pretty_name": f"THINKSAFE SFT set ({cfg.name})",
            "tags": ["safety", "reasoning", "refusal", "thinksafe", "synthetic"],
            "task_categories": ["text-generation"],
            "annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
            "source_datasets": ["thinksafe-organism" if src == "organism" else str(src)],
            "size_categories": [size_category(n_rows)],
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": PARQUET}]}],
            "dataset_info": {"features": [{"name": k, "dtype": "string"} for k in
                                          ("id", "prompt", "response", "label", "category", "steering")],
                             "splits": [{"name": "train", "num_examples": n_rows}]}}
    L = [_fm(meta), f"# THINKSAFE SFT set: {cfg.name}", "",
         "Self-generated safety-alignment data (THINKSAFE): the model answered its own training prompts, "
         "harmful prompts steered to refuse; a guard judged each (original prompt, full response) and only "
         "complete, guard-safe samples were kept. The `prompt` column is the ORIGINAL prompt, never the "
         "steering text; `response` is the model's full response (reasoning and answer).", ""]
    L += _how_it_was_made(cfg, _stage(manifest, "judge").get("summary") or {})
    L += _drops(stats, n_rows)
    L += _compute(manifest)
    L += ["", "Made with `thinksafe export`; numbers from the run's `dataset_stats.json` and "
          "`manifest.json`.", ""]
    return "\n".join(L)


def _how_it_was_made(cfg, judge: dict) -> list[str]:
    from thinksafe import steering
    src = cfg.prompts.source
    L = ["## How it was made", "",
         f"- **Model**: `{cfg.model.path}` (chat-template family `{cfg.model.family}`, backend "
         f"`{cfg.model.backend}`)",
         f"- **Prompts**: `{src}` — {cfg.prompts.n_harmful} harmful, {cfg.prompts.n_reasoning} reasoning, "
         f"{cfg.prompts.n_borderline} borderline requested; seed {cfg.seed}",
         f"- **Steering** (harmful prompts only): `{cfg.generate.steering}`"]
    template = steering.resolve(cfg.generate.steering)
    if template:
        L += ["", "```", template, "```", ""]
    L += ["- **Sampling**: " + ", ".join(f"{k} {v}" for k, v in _sampling(cfg).items()),
          f"- **Guard**: `{cfg.guard.kind}` `{cfg.guard.path}`; verdict read as "
          + ("the next-token probability of \"safe\" vs \"unsafe\" (P(safe))" if cfg.guard.kind == "llama_guard"
             else "the guard's parsed output") +
          f"; an unparsed verdict counts as unsafe (fail closed); inputs over {cfg.guard.max_input_tokens} "
          f"tokens cut from the end of the response ({judge.get('truncated_inputs', 0)} were)", ""]
    return L


def _drops(stats: dict, n_rows: int) -> list[str]:
    """Acceptance and drops (by reason, label and group), and the decontamination."""
    L = ["## Acceptance and drops", "",
         f"{stats.get('kept', n_rows)} of {stats.get('total', '?')} generated samples kept.", ""]
    drops = stats.get("dropped") or {}
    L += _table(["reason", "dropped"], [[k, v] for k, v in sorted(drops.items())] or [["(none)", 0]])
    L += ["", "Acceptance by label: " + ", ".join(f"{k} {v:.3f}" for k, v in (stats.get("acceptance") or {}).items()),
          "", "By group:", ""]
    reasons = sorted({k for g in (stats.get("by_group") or {}).values() for k in g} - {"total", "kept"})
    L += _table(["group", "total", "kept", *reasons],
                [[g, c.get("total", 0), c.get("kept", 0), *[c.get(r, 0) for r in reasons]]
                 for g, c in (stats.get("by_group") or {}).items()])
    dec = stats.get("decontamination") or {}
    L += ["", "## Decontamination", ""]
    if dec.get("enabled"):
        L += [f"{dec.get('ngram')}-gram overlap against {dec.get('eval_prompts')} evaluation prompts "
              f"({', '.join(f'{k}: {v}' for k, v in (dec.get('benchmarks') or {}).items())}); "
              f"{dec.get('dropped', 0)} samples dropped."]
    else:
        L += ["Not enabled for this run."]
    return L


def _compute(manifest: dict) -> list[str]:
    rows = []
    for s in ("generate", "judge"):
        c = _stage(manifest, s).get("compute") or {}
        rows.append([s, c.get("seconds"), c.get("device"), c.get("tokens_generated"),
                     f"{c['flops']:.3g}" if c.get("flops") is not None else None])
    return ["", "## Compute", "", *_table(["stage", "seconds", "device", "tokens generated", "FLOPs"], rows)]


def eval_rows(run: Path) -> tuple[list[str], list[list]]:
    """The evaluation table of summary.json, with limit/partial flags."""
    summary = _json(run / "summary.json") or {}
    models = summary.get("models") or {}
    from thinksafe.stages.report import COLUMNS
    organism = [n for n, m in models.items() if "harmful_rate" in m]
    if organism:
        head = ["model", *[name for _, name in COLUMNS]]
        return head, [[n, *[f"{models[n][k]:.3f}" for k, _ in COLUMNS]] for n in organism]
    rows, head = [], ["model"]
    for n, m in models.items():
        p = m.get("paper") or {}
        cols = [k for k, v in p.items() if not k.endswith(" of") and not isinstance(v, (list, dict))]
        head = ["model", *cols, "flags"] if len(cols) + 2 > len(head) else head
        limits = {b: bm.get("limit") for b, bm in ((_json(run / "eval" / n / "metrics.json") or {})
                                                  .get("benchmarks") or {}).items() if bm.get("limit")}
        flags = [f"partial average ({k}: {', '.join(v)})" for k, v in p.items()
                 if k.endswith(" of") and isinstance(v, list) and len(v) < 4]
        flags += [f"{b} limit {lim}" for b, lim in limits.items()]
        rows.append([n, *[p.get(k) for k in cols], "; ".join(flags) or "full"])
    return head, rows


def adapter_card(run: Path, license: str = "other") -> str:
    cfg = _cfg(run)
    t = _json(run / "train_summary.json") or {}
    tc = cfg.train
    meta = {"base_model": cfg.model.path, "library_name": "peft", "license": license,
            "tags": ["thinksafe", "safety", "lora", "sft", "reasoning"], "pipeline_tag": "text-generation"}
    L = [_fm(meta), f"# THINKSAFE adapter: {cfg.name}", "",
         f"A LoRA adapter for `{cfg.model.path}` trained with THINKSAFE on the model's own steered, "
         "guard-filtered safety reasoning (loss on the response only).", "",
         "## Training", ""]
    L += _table(["setting", "value"], [
        ["base model", cfg.model.path], ["method", f"{t.get('method', tc.method)} ({t.get('objective', tc.objective)})"],
        ["LoRA r / alpha / dropout", f"{tc.lora.r} / {tc.lora.alpha} / {tc.lora.dropout}"],
        ["target modules", ", ".join(tc.lora.target_modules) if isinstance(tc.lora.target_modules, list)
         else tc.lora.target_modules],
        ["learning rate", tc.lr], ["epochs", t.get("epochs", tc.epochs)], ["batch size", tc.batch_size],
        ["scheduler", tc.scheduler], ["max length", t.get("max_length", tc.max_length)],
        ["examples", t.get("examples")], ["steps", t.get("steps")], ["train loss", t.get("train_loss")],
        ["response tokens", t.get("response_tokens")], ["trainable params", t.get("trainable_params")],
        ["seconds", t.get("seconds")], ["seed", cfg.seed]])
    head, rows = eval_rows(run)
    L += ["", "## Evaluation", ""]
    L += _table(head, rows) if rows else ["No evaluation in this run."]
    L += ["", f"Guard used as judge: `{cfg.guard.kind}` `{cfg.guard.path}` (an unparsed verdict counts as "
          "harmful). Numbers from the run's `summary.json` and `train_summary.json`.", ""]
    return "\n".join(L)


def export_run(run: Path, out: Path, license: str = "other") -> dict:
    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise ConfigError(f"run folder not found: {run}")
    sft = run / "sft.jsonl"
    if not sft.is_file():
        raise DataError(f"{sft} not found; run `thinksafe dataset` first")
    ds = out / "dataset"
    n = write_parquet(sft, ds / PARQUET)
    write_text(ds / "README.md", dataset_card(run, n, license))
    stats = _json(run / "dataset_stats.json") or {}
    if stats and stats.get("kept") != n:
        raise DataError(f"{sft} has {n} rows but dataset_stats.json says kept={stats.get('kept')}")
    adapter = None
    if (run / "adapter" / "adapter_config.json").is_file():
        adapter = out / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        for f in (run / "adapter").iterdir():       # not training_args.bin: a pickle, local paths
            if f.is_file() and not f.is_symlink() and f.name not in SKIP_ADAPTER_FILES:
                shutil.copy2(f, adapter / f.name)
        write_text(adapter / "README.md", adapter_card(run, license))
    return {"out": out, "rows": n, "dataset": ds, "adapter": adapter}


def push(exported: dict, repo: str, private: bool = False, api=None) -> list[str]:
    """Upload the exported folders: the dataset to ``repo`` (a dataset repo), the adapter to
    ``repo-adapter`` (a model repo). ``api``: an ``HfApi`` (tests pass a stand-in)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError as e:          # pragma: no cover
        raise HubError(f"huggingface_hub is not installed: {e}") from None
    api = api or HfApi()
    done = []
    targets = [(exported["dataset"], repo, "dataset")]
    if exported.get("adapter"):
        targets.append((exported["adapter"], f"{repo}-adapter", "model"))
    for folder, repo_id, kind in targets:
        try:
            api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=kind,
                                     commit_message="thinksafe export")
        except HfHubHTTPError as e:
            code = getattr(getattr(e, "response", None), "status_code", None)
            what = "not authorised (run `hf auth login` or set HF_TOKEN)" if code in (401, 403) else \
                f"HTTP {code}" if code else "failed"
            raise HubError(f"push to {kind} repo {repo_id}: {what}") from None
        except Exception as e:                  # no network, bad repo id, no token: one line
            first = (str(e).splitlines() or [""])[0]
            raise HubError(f"push to {kind} repo {repo_id}: {type(e).__name__}: {first}") from None
        done.append(f"pushed {kind} {repo_id}: {getattr(info, 'commit_url', info)}")
    return done

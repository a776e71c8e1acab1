"""Preflight of what the stages read besides models: the prompt source and the generation it plans
(steering, shard, disk space), and the evaluation benchmarks with their data files."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from thinksafe.errors import ConfigError, ThinksafeError
from thinksafe.preflight.base import Preflight, hub_problem, offline, split_key

BYTES_PER_TOKEN = 8          # generated.jsonl holds each token's text (~4 bytes) plus JSON around it


def check_generate(pf: Preflight, cfg) -> None:
    from thinksafe import steering
    from thinksafe.generation import parse_shard
    for fn, value in ((steering.resolve, cfg.generate.steering), (parse_shard, cfg.generate.shard)):
        try:
            fn(value)
        except ConfigError as e:
            pf.problem(*split_key(str(e), "generate"))
    n = _check_prompts(pf, cfg)
    if n is None:
        return
    samples = cfg.generate.samples
    tokens = n * samples * cfg.generate.max_new_tokens
    pf.plan.append(("prompts", f"{n} from {cfg.prompts.source}" +
                    (f" (prompts.limit {cfg.prompts.limit})" if getattr(cfg.prompts, "limit", None) else "")))
    pf.plan.append(("generation", f"{n * samples} responses, at most {tokens:,} tokens "
                                  f"({samples} sample(s) x {cfg.generate.max_new_tokens} max_new_tokens)"))
    free = _free_bytes(Path(cfg.out))
    need = tokens * BYTES_PER_TOKEN
    if free is not None and need > free:
        pf.notes.append(f"out: the planned generation may need up to {need / 1e9:.1f} GB "
                        f"and {free / 1e9:.1f} GB are free where it goes")


def _check_prompts(pf: Preflight, cfg) -> int | None:
    """The number of training prompts (None: unknown or a problem)."""
    pc = cfg.prompts
    limit = getattr(pc, "limit", None)
    cap = (lambda n: n if limit is None else min(n, limit))
    if pc.source == "organism":
        return cap(pc.n_harmful + pc.n_reasoning + pc.n_borderline)
    if pc.source.startswith("hf:"):
        repo = pc.source[3:]
        if _dataset_cached(repo):
            pf.plan.append(("prompts.source", f"{repo} (in the local cache)"))
            return limit
        if offline():
            pf.problem("prompts.source", f"hub dataset {repo} is not in the local cache and HF_HUB_OFFLINE=1: "
                                         f"`hf download --repo-type dataset {repo}` online, or a local file")
            return None
        err = hub_problem(repo, "dataset")
        if err:
            pf.problem("prompts.source", err)
        return limit
    p = Path(pc.source).expanduser()
    if not p.is_file():
        pf.problem("prompts.source", f"prompt file not found: {pc.source} (or use organism / hf:<dataset id>)")
        return None
    if p.suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        pf.problem("prompts.source", f"{pc.source}: unknown prompt file type '{p.suffix}' "
                                     "(use .jsonl, .json, .csv or .tsv)")
        return None
    try:
        from thinksafe.prompts import read_rows
        rows = read_rows(p)
    except ThinksafeError as e:
        pf.problem("prompts.source", str(e))
        return None
    if not rows:
        pf.problem("prompts.source", f"{pc.source}: no prompts in the file")
        return None
    first = rows[0] if isinstance(rows[0], dict) else {}
    if pc.prompt_field not in first:
        pf.problem("prompts.prompt_field", f"'{pc.prompt_field}' is not a field of {pc.source} "
                                           f"(fields: {', '.join(map(str, first))})")
    return cap(len(rows))


def _dataset_cached(repo: str) -> bool:
    from huggingface_hub import constants
    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
    dsets = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    owner, _, name = repo.partition("/")
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("-", "_")
    if (hub / "snapshots").is_dir():
        return True
    return dsets.is_dir() and any(dsets.glob(f"{owner}___{snake}*"))


def _free_bytes(path: Path) -> int | None:
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def benchmark_kind(name: str) -> str:
    from thinksafe.evalsets import kind_of
    try:
        return kind_of(name)
    except ThinksafeError:
        return "?"


def check_benchmarks(pf: Preflight, cfg, evaluating: bool) -> list[str]:
    """Every benchmark name known and its data file present and readable (a gated one absent: a
    note, it is skipped and recorded); the resolved names."""
    from thinksafe.benchmarks import default_data_dir
    from thinksafe.benchmarks.sources import cache_root as cached_root
    from thinksafe.evalsets import resolve_benchmarks
    e = cfg.evaluate
    try:
        names = resolve_benchmarks(e.benchmarks)
    except ConfigError as err:
        pf.problem(*split_key(str(err), "evaluate.benchmarks"))
        return []
    real = [n for n in names if n != "organism"]
    best_effort = not evaluating and cfg.dataset.decontaminate == "best_effort"
    limit = f", the first {e.limit} prompts of each (evaluate.limit: a partial evaluation)" \
        if e.limit is not None and evaluating else ""
    pf.plan.append(("benchmarks", (", ".join(names) or "none") + limit))
    if not real:
        return names
    if e.data_dir is not None:
        data_dir = Path(e.data_dir).expanduser()
        if not data_dir.exists():
            pf.problem("evaluate.data_dir", f"{e.data_dir} does not exist (the folder holding safety/ and "
                                            f"reasoning/, needed by {', '.join(real)})")
            return names
    else:
        data_dir = default_data_dir()
        if not data_dir.exists():       # files absent locally are fetched from their pinned sources
            data_dir = f"{data_dir} (absent: benchmark files are fetched, checksum-verified, " \
                       f"into {cached_root()})"
    pf.plan.append(("evaluate.data_dir", str(data_dir)))
    responses, tokens = count_benchmarks(pf, e, real, evaluating, best_effort)
    if evaluating and responses:
        pf.plan.append(("evaluation", f"{responses:,} responses per model evaluated (base, and the trained "
                                      f"one), at most {tokens:,} tokens each"))
    return names


def count_benchmarks(pf: Preflight, e, real: list[str], evaluating: bool, best_effort: bool) -> tuple[int, int]:
    """Read each benchmark (from its file or the cache: the preflight downloads nothing); (responses,
    tokens) the evaluation will generate. Missing files are problems (one line for all when the cache
    is empty offline); a gated one, or any under best_effort decontamination, a note."""
    from thinksafe.benchmarks.sources import NotCached, NotFetched, no_download
    from thinksafe.evalsets import GATED, load_benchmark
    responses = tokens = 0
    not_cached: list[tuple[str, str]] = []
    for name in real:
        try:
            with no_download():
                n = len(load_benchmark(name, e.data_dir, e.limit if evaluating else 1))
        except NotFetched as err:
            pf.notes.append(str(err))
            continue
        except NotCached as err:
            if best_effort:
                pf.notes.append(f"evaluate.benchmarks: {name} will be skipped (and recorded): {err}")
            else:
                not_cached.append((name, str(err)))
            continue
        except ThinksafeError as err:
            if name in GATED or best_effort:
                pf.notes.append(f"evaluate.benchmarks: {name} will be skipped (and recorded): {err}")
            else:
                msg = str(err)
                named = msg.startswith(f"benchmark {name}:")      # the fetch's own lines name it
                pf.problem("evaluate.data_dir", msg if named else f"benchmark {name}: {msg}")
            continue
        reasoning = benchmark_kind(name) == "reasoning"
        k = n * ((e.samples or 8) if reasoning else 1)
        responses += k
        tokens += k * ((e.reasoning_max_new_tokens or e.max_new_tokens) if reasoning else e.max_new_tokens)
    if len(not_cached) == 1:
        pf.problem("evaluate.data_dir", not_cached[0][1])
    elif not_cached:
        from thinksafe.benchmarks.sources import cache_root
        pf.problem("evaluate.data_dir", f"{len(not_cached)} benchmark files are not in the cache "
                   f"({cache_root() / 'thinksafe-benchmarks'}) and HF_HUB_OFFLINE is set "
                   f"({', '.join(n for n, _ in not_cached)}); unset it to fetch them from their pinned "
                   "sources, or set evaluate.data_dir to a folder holding safety/ and reasoning/")
    return responses, tokens

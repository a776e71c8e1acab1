"""Preflight: check everything the requested stages will need before any of them runs or writes.

``preflight(cfg, stages)`` resolves every model / guard / refusal-guard path or Hub id, guard kind
(and its fit to its use), prompt source, evaluation benchmark and its data file, LoRA target module
(against the module names of the model, read from its weight files' headers, never by loading
weights), training and GRPO setting, the run folder and the disk space for the planned generation.
It loads no weights and is offline-aware (``HF_HUB_OFFLINE=1``: the local Hugging Face cache only).
Each problem is one line naming the config key; ``require`` raises them together as a
``PreflightError`` (exit 2 at the command line). ``thinksafe check CONFIG`` prints the result and
what the run will do.

``unchanged_on_failure(run_dir)`` is the other half of "validate, then write": a command that fails
before any stage output changed leaves the run folder's ``config.yaml`` and ``manifest.json``
byte-identical (and a folder it created is removed again).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from thinksafe.errors import ConfigError, ThinksafeError

RUN_STAGES = ("generate", "judge", "dataset", "train", "evaluate", "report")
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
# Guard kinds whose verdict includes WildGuard's "Response refusal" (XSTest's over-refusal judge).
REFUSAL_KINDS = ("wildguard",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
BYTES_PER_TOKEN = 8          # generated.jsonl holds each token's text (~4 bytes) plus JSON around it


class PreflightError(ConfigError):
    """One or more preflight problems, one line each (``problems``)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Preflight:
    stages: list[str]
    problems: list[str] = field(default_factory=list)    # fatal, one line each, "key: what"
    notes: list[str] = field(default_factory=list)       # worth knowing, not fatal
    plan: list[tuple[str, str]] = field(default_factory=list)   # (what, value) for `thinksafe check`

    def problem(self, key: str, msg: str) -> None:
        line = f"{key}: {msg}"
        if line not in self.problems:
            self.problems.append(line)

    @property
    def ok(self) -> bool:
        return not self.problems


# ============================================================================ entry points
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
    need_model = any(s in stages for s in ("generate", "train", "evaluate", "grpo")) or \
        ("judge" in stages and cfg.generate.max_attempts > 1)       # judge resamples with the model
    need_guard = "judge" in stages or "grpo" in stages
    names: list[str] = []
    if "evaluate" in stages or ("dataset" in stages and cfg.dataset.decontaminate):
        names = _check_benchmarks(pf, cfg, "evaluate" in stages)
    if "evaluate" in stages and any(_kind(n) in ("organism", "safety") for n in names):
        need_guard = True
    model_dir = None
    if need_model:
        _check_choice(pf, "model.family", cfg.model.family, _families())
        _check_backend(pf, "model.backend", cfg.model.backend)
        model_dir = _check_model(pf, "model.path", cfg.model.path)
    if need_guard:
        _check_guard(pf, cfg)
    if "evaluate" in stages and any(_kind(n) == "overrefusal" for n in names):
        _check_refusal_guard(pf, cfg)
    if "generate" in stages or "grpo" in stages:
        _check_generate(pf, cfg)
    if "train" in stages:
        _check_train(pf, cfg, model_dir)
    if "grpo" in stages:
        _check_grpo(pf, cfg, model_dir)
    _check_out(pf, cfg)
    return pf


# ============================================================================ models and guards
def _families() -> tuple[str, ...]:
    from thinksafe.families import FAMILIES
    return tuple(FAMILIES)


def _check_choice(pf: Preflight, key: str, value, allowed) -> bool:
    if value in allowed:
        return True
    guess = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" Did you mean '{guess[0]}'?" if guess else ""
    pf.problem(key, f"'{value}' is unknown.{hint} Known: {', '.join(map(str, allowed))}")
    return False


def _check_backend(pf: Preflight, key: str, name: str | None) -> None:
    from thinksafe.backends import KNOWN
    if name is None or not _check_choice(pf, key, name, KNOWN):
        return
    if name == "vllm" and not _installed("vllm"):
        pf.problem(key, "vllm is not installed: pip install 'thinksafe[vllm]' (or use transformers)")


def _installed(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ValueError, ImportError):
        return False


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _is_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().is_dir()


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(g)) for g in WEIGHT_GLOBS)


def _check_model(pf: Preflight, key: str, path: str, weights: bool = True, what: str = "model") -> Path | None:
    """A model path or Hub id the stages will load: the local folder it resolves to (None: not
    local, or a problem, which is recorded)."""
    from thinksafe.organism import ALIASES, organism_dir
    if path in ALIASES:
        folder = organism_dir() / ALIASES[path]
        if not (folder / "config.json").is_file():
            pf.problem(key, f"the organism is not built at {folder.parent}; run `thinksafe organism build`")
            return None
        pf.plan.append((key, f"{path} ({folder})"))
        return folder
    if _is_local(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            pf.problem(key, f"{what} folder not found: {path}")
            return None
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            pf.problem(key, f"{what} folder {path} holds no model (no config.json)")
            return None
        if weights and not _has_weights(folder):
            pf.problem(key, f"{what} folder {path} holds no weights (no {', '.join(WEIGHT_GLOBS)})")
            return None
        pf.plan.append((key, f"{path} (local folder)"))
        return folder
    if not HUB_ID.match(path) or path.count("/") != 1:
        pf.problem(key, f"'{path}' is neither a local folder nor a Hugging Face id (owner/name)")
        return None
    cached = hub_cached(path)
    if cached is not None:
        if weights and not _has_weights(cached):
            if offline():
                pf.problem(key, f"{path} is in the local Hugging Face cache without its weights and "
                                f"HF_HUB_OFFLINE=1: `hf download {path}` on a machine online, or set {key} "
                                "to a local folder")
                return None
            pf.plan.append((key, f"{path} (cached without weights: downloaded on first use)"))
            return cached
        pf.plan.append((key, f"{path} (in the local Hugging Face cache)"))
        return cached
    if offline():
        pf.problem(key, f"{path} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: "
                        f"`hf download {path}` on a machine online, or set {key} to a local folder")
        return None
    err = hub_problem(path)
    if err:
        pf.problem(key, err)
        return None
    pf.plan.append((key, f"{path} (on the Hub: downloaded on first use)"))
    return None


def hub_cached(repo_id: str, repo_type: str = "model") -> Path | None:
    """The cached snapshot folder of a Hub repo holding its config.json (None: not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(repo_id, "config.json", repo_type=repo_type)
    except Exception:   # noqa: BLE001 - an invalid id or a cache it cannot read: not cached
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def hub_problem(repo_id: str, repo_type: str = "model", timeout: float = 10.0) -> str | None:
    """One line saying why ``repo_id`` cannot be downloaded now (None: it can)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:         # pragma: no cover - a dependency of transformers
        return None
    page = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    try:
        HfApi().auth_check(repo_id, repo_type=repo_type)
        return None
    except GatedRepoError:
        return (f"{repo_id} is gated: accept its licence at {page}, then `hf auth login` (or set HF_TOKEN); "
                "or point at a local copy")
    except RepositoryNotFoundError:
        return (f"{repo_id} was not found on the Hub (ids are case-sensitive; a private repo needs "
                "`hf auth login`)")
    except Exception as e:     # noqa: BLE001 - network: one line, what to do
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return (f"the Hub cannot be reached for {repo_id} ({type(e).__name__}: {first}); set "
                "HF_HUB_OFFLINE=1 and a local folder, or check the network")


def _check_guard(pf: Preflight, cfg) -> None:
    from thinksafe.guards import KINDS
    g = cfg.guard
    _check_choice(pf, "guard.kind", g.kind, KINDS)
    if g.backend is not None:
        _check_backend(pf, "guard.backend", g.backend)
    elif cfg.model.backend != "transformers":
        _check_backend(pf, "model.backend", cfg.model.backend)
    if g.server_url:
        if not re.match(r"^https?://", g.server_url):
            pf.problem("guard.server_url", f"'{g.server_url}' must start with http:// or https://")
        pf.plan.append(("guard", f"{g.kind} served at {g.server_url} (health-checked when it starts)"))
        _check_model(pf, "guard.path", g.path, weights=False, what="guard")   # its tokenizer
        return
    _check_model(pf, "guard.path", g.path, what="guard")


def _check_refusal_guard(pf: Preflight, cfg) -> None:
    e = cfg.evaluate
    if (e.refusal_guard_kind, e.refusal_guard_path) == (cfg.guard.kind, cfg.guard.path) \
            and e.refusal_guard_kind in REFUSAL_KINDS:
        return                                   # the guard itself (checked above)
    from thinksafe.guards import KINDS
    if _check_choice(pf, "evaluate.refusal_guard_kind", e.refusal_guard_kind, KINDS) \
            and e.refusal_guard_kind not in REFUSAL_KINDS:
        pf.problem("evaluate.refusal_guard_kind",
                   f"'{e.refusal_guard_kind}' gives no refusal verdict (XSTest's over-refusal needs one): "
                   f"use {' or '.join(REFUSAL_KINDS)}, e.g. allenai/wildguard")
    _check_model(pf, "evaluate.refusal_guard_path", e.refusal_guard_path, what="refusal guard")


# ============================================================================ prompts, generation
def _check_generate(pf: Preflight, cfg) -> None:
    from thinksafe import steering
    from thinksafe.generation import parse_shard
    for fn, value in ((steering.resolve, cfg.generate.steering), (parse_shard, cfg.generate.shard)):
        try:
            fn(value)
        except ConfigError as e:
            pf.problem(*_split(str(e), "generate"))
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


def _split(msg: str, default_key: str) -> tuple[str, str]:
    """A ConfigError message that starts with its key -> (key, rest); else (default_key, msg)."""
    m = re.match(r"^([a-z_]+(?:\.[a-z_]+)+)[ :]+(.*)$", msg, re.S)
    if m:
        return m.group(1), m.group(2)
    return default_key, msg


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


# ============================================================================ benchmarks
def _kind(name: str) -> str:
    from thinksafe.evalsets import kind_of
    try:
        return kind_of(name)
    except ThinksafeError:
        return "?"


def _check_benchmarks(pf: Preflight, cfg, evaluating: bool) -> list[str]:
    """Every benchmark name known and its data file present and readable (a gated one absent: a
    note, it is skipped and recorded); the resolved names."""
    from thinksafe.benchmarks import default_data_dir
    from thinksafe.benchmarks.sources import NotCached, NotFetched, no_download
    from thinksafe.benchmarks.sources import cache_root as cached_root
    from thinksafe.evalsets import GATED, load_benchmark, resolve_benchmarks
    e = cfg.evaluate
    try:
        names = resolve_benchmarks(e.benchmarks)
    except ConfigError as err:
        pf.problem(*_split(str(err), "evaluate.benchmarks"))
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
    responses = tokens = 0
    not_cached: list[tuple[str, str]] = []
    for name in real:
        try:
            with no_download():         # the preflight reads the cache, downloads nothing
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
        reasoning = _kind(name) == "reasoning"
        k = n * ((e.samples or 8) if reasoning else 1)
        responses += k
        tokens += k * ((e.reasoning_max_new_tokens or e.max_new_tokens) if reasoning else e.max_new_tokens)
    if len(not_cached) == 1:
        pf.problem("evaluate.data_dir", not_cached[0][1])
    elif not_cached:                    # one line for them all (offline, an empty cache)
        pf.problem("evaluate.data_dir", f"{len(not_cached)} benchmark files are not in the cache "
                   f"({cached_root() / 'thinksafe-benchmarks'}) and HF_HUB_OFFLINE is set "
                   f"({', '.join(n for n, _ in not_cached)}); unset it to fetch them from their pinned "
                   "sources, or set evaluate.data_dir to a folder holding safety/ and reasoning/")
    if evaluating and responses:
        pf.plan.append(("evaluation", f"{responses:,} responses per model evaluated (base, and the trained "
                                      f"one), at most {tokens:,} tokens each"))
    return names


# ============================================================================ training
METHOD_KEYS = ("method", "objective", "truncation", "report_to")


def _check_train(pf: Preflight, cfg, model_dir: Path | None) -> None:
    from thinksafe.trainers.examples import TRUNCATIONS
    from thinksafe.trainers.setup import METHODS, OBJECTIVES, REPORTERS, check_reporter, check_train_config
    tc = cfg.train
    ok = all([_check_choice(pf, f"train.{k}", getattr(tc, k), allowed) for k, allowed in
              zip(METHOD_KEYS, (METHODS, OBJECTIVES, TRUNCATIONS, REPORTERS))])
    if ok:
        for fn, arg in ((check_train_config, tc), (check_reporter, tc.report_to)):
            try:
                fn(arg)
            except ThinksafeError as e:
                pf.problem(*_split(str(e), "train"))
    if tc.method == "lora":
        _check_lora(pf, tc.lora, model_dir, cfg.model.path)
    pf.plan.append(("train", f"{tc.method} / {tc.objective}, {tc.epochs:g} epoch(s), lr {tc.lr:g}"))


def _check_grpo(pf: Preflight, cfg, model_dir: Path | None) -> None:
    from thinksafe.stages.grpo import FORMATS, check_grpo_config
    _check_choice(pf, "grpo.format_reward", cfg.grpo.format_reward, FORMATS)
    _check_choice(pf, "grpo.vllm_mode", cfg.grpo.vllm_mode, ("colocate", "server"))
    try:
        check_grpo_config(cfg.grpo)
    except ThinksafeError as e:
        pf.problem(*_split(str(e), "grpo"))
    _check_lora(pf, cfg.train.lora, model_dir, cfg.model.path)


def _check_lora(pf: Preflight, lc, model_dir: Path | None, model_path: str) -> None:
    targets = lc.target_modules
    if targets in (["all-linear"], "all-linear"):
        return
    if model_dir is None:
        pf.notes.append(f"train.lora.target_modules: not checked ({model_path} is not on this machine)")
        return
    names = module_names(model_dir)
    if names is None:
        pf.notes.append(f"train.lora.target_modules: not checked (no weight index or safetensors in {model_dir})")
        return
    from thinksafe.trainers.setup import unmatched_targets
    missing = unmatched_targets(names, targets)
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        guess = [g for m in missing for g in difflib.get_close_matches(m, leaves, n=1)]
        hint = f" Did you mean {', '.join(repr(g) for g in guess)}?" if guess else ""
        pf.problem("train.lora.target_modules",
                   f"{', '.join(repr(m) for m in missing)} match{'es' if len(missing) == 1 else ''} no module "
                   f"of {model_path}.{hint} Its modules: {', '.join(leaves)}")
    layers = lc.layers
    n_layers = _num_layers(model_dir)
    if layers is not None and n_layers is not None:
        from thinksafe.trainers.setup import layer_range
        try:
            layer_range(lc, n_layers)
        except ConfigError as e:
            pf.problem(*_split(str(e), "train.lora.layers"))


def module_names(model_dir: Path) -> list[str] | None:
    """The model's weight-bearing module names (``model.layers.0.self_attn.q_proj``), from the
    safetensors index or the files' headers: no weights are read. None when neither is there."""
    model_dir = Path(model_dir)
    tensors: list[str] = []
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        tensors = list(json.loads(index.read_text()).get("weight_map", {}))
    else:
        for f in sorted(model_dir.glob("*.safetensors")):
            tensors += safetensors_names(f)
    if not tensors:
        return None
    return sorted({t.rsplit(".", 1)[0] for t in tensors if "." in t})


def safetensors_names(path: Path) -> list[str]:
    """Tensor names from a safetensors file's header (8-byte length, then JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


def _num_layers(model_dir: Path) -> int | None:
    p = Path(model_dir) / "config.json"
    try:
        c = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return c.get("num_hidden_layers") or (c.get("text_config") or {}).get("num_hidden_layers")


# ============================================================================ the run folder
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


BOOKKEEPING = ("config.yaml", "manifest.json", "manifest.json.lock")


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _, files in os.walk(run_dir):
        for f in files:
            p = Path(root) / f
            try:
                st = p.stat()
            except OSError:
                continue
            out[str(p.relative_to(run_dir))] = (st.st_size, st.st_mtime_ns)
    return out


@contextlib.contextmanager
def unchanged_on_failure(run_dir) -> Iterator[None]:
    """Run a command's writes; if it fails before any output (anything but the bookkeeping files)
    changed, put ``config.yaml`` / ``manifest.json`` back byte for byte (and remove a folder this
    command created). A stage that failed after writing outputs keeps its record of them."""
    run_dir = Path(run_dir)
    existed = run_dir.is_dir()
    before = _snapshot(run_dir) if existed else {}
    saved = {}
    for name in BOOKKEEPING:
        p = run_dir / name
        if p.is_file():
            st = p.stat()
            saved[name] = (p.read_bytes(), st.st_atime_ns, st.st_mtime_ns)
    try:
        yield
    except BaseException:
        try:
            _restore(run_dir, existed, before, saved)
        except OSError:         # never hide the original error
            pass
        raise


def _restore(run_dir: Path, existed: bool, before: dict, saved: dict) -> None:
    if not run_dir.is_dir():
        return
    after = _snapshot(run_dir)
    strip = lambda snap: {k: v for k, v in snap.items() if k not in BOOKKEEPING}  # noqa: E731
    if strip(after) != strip(before):
        return                  # outputs changed: the record must describe them
    for name in BOOKKEEPING:
        p = run_dir / name
        if name in saved:
            data, atime, mtime = saved[name]
            if not p.is_file() or p.read_bytes() != data:
                tmp = p.with_name(p.name + ".restore")
                tmp.write_bytes(data)
                os.replace(tmp, p)
            os.utime(p, ns=(atime, mtime))
        elif p.exists():
            p.unlink()
    if not existed:
        for d in sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            run_dir.rmdir()


# ============================================================================ `thinksafe check`
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

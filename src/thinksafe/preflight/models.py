"""Preflight of the models the stages load: the model, guard and refusal-guard paths or Hub ids (local
folder, organism, Hub cache or the Hub itself), their backends and kinds, and the LoRA targets and layers
against the model's module names, read from its weight files' headers (no weights loaded)."""

from __future__ import annotations

import difflib
import json
import re
import struct
from pathlib import Path

from thinksafe.errors import ConfigError
from thinksafe.preflight.base import Preflight, check_choice, hub_problem, offline, split_key
from thinksafe.validation import layer_range

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
# Guard kinds whose verdict includes WildGuard's "Response refusal" (XSTest's over-refusal judge).
REFUSAL_KINDS = ("wildguard",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def families() -> tuple[str, ...]:
    from thinksafe.families import FAMILIES
    return tuple(FAMILIES)


def check_backend(pf: Preflight, key: str, name: str | None) -> None:
    from thinksafe.backends import KNOWN
    if name is None or not check_choice(pf, key, name, KNOWN):
        return
    if name == "vllm" and not _installed("vllm"):
        pf.problem(key, "vllm is not installed: pip install 'thinksafe[vllm]' (or use transformers)")


def _installed(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ValueError, ImportError):
        return False


def _is_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().is_dir()


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(g)) for g in WEIGHT_GLOBS)


def check_model(pf: Preflight, key: str, path: str, weights: bool = True, what: str = "model") -> Path | None:
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


def check_guard(pf: Preflight, cfg) -> None:
    from thinksafe.guards import KINDS
    g = cfg.guard
    check_choice(pf, "guard.kind", g.kind, KINDS)
    if g.backend is not None:
        check_backend(pf, "guard.backend", g.backend)
    elif cfg.model.backend != "transformers":
        check_backend(pf, "model.backend", cfg.model.backend)
    if g.server_url:
        if not re.match(r"^https?://", g.server_url):
            pf.problem("guard.server_url", f"'{g.server_url}' must start with http:// or https://")
        pf.plan.append(("guard", f"{g.kind} served at {g.server_url} (health-checked when it starts)"))
        check_model(pf, "guard.path", g.path, weights=False, what="guard")   # its tokenizer
        return
    check_model(pf, "guard.path", g.path, what="guard")


def check_refusal_guard(pf: Preflight, cfg) -> None:
    e = cfg.evaluate
    if (e.refusal_guard_kind, e.refusal_guard_path) == (cfg.guard.kind, cfg.guard.path) \
            and e.refusal_guard_kind in REFUSAL_KINDS:
        return                                   # the guard itself (checked above)
    from thinksafe.guards import KINDS
    if check_choice(pf, "evaluate.refusal_guard_kind", e.refusal_guard_kind, KINDS) \
            and e.refusal_guard_kind not in REFUSAL_KINDS:
        pf.problem("evaluate.refusal_guard_kind",
                   f"'{e.refusal_guard_kind}' gives no refusal verdict (XSTest's over-refusal needs one): "
                   f"use {' or '.join(REFUSAL_KINDS)}, e.g. allenai/wildguard")
    check_model(pf, "evaluate.refusal_guard_path", e.refusal_guard_path, what="refusal guard")


def check_lora(pf: Preflight, lc, model_dir: Path | None, model_path: str) -> None:
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
        try:
            layer_range(lc, n_layers)
        except ConfigError as e:
            pf.problem(*split_key(str(e), "train.lora.layers"))


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

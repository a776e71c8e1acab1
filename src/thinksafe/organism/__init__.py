"""The model organism: a synthetic world, a tiny Qwen3-architecture reasoning model, a tiny guard
and a teacher model (the same world, its own wording).

The built organism ships inside the package (``assets/``); ``thinksafe organism build`` rebuilds it.
``THINKSAFE_ORGANISM=/some/dir`` points every "organism" model path at another build.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
ALIASES = {"organism": "base", "organism-guard": "guard", "organism-teacher": "teacher"}


def organism_dir() -> Path:
    return Path(os.environ.get("THINKSAFE_ORGANISM", ASSETS))


def resolve_model_path(path: str) -> str:
    """'organism' / 'organism-guard' / 'organism-teacher' -> the built folders; anything else is returned unchanged."""
    if path in ALIASES:
        folder = organism_dir() / ALIASES[path]
        if not (folder / "config.json").is_file():
            from thinksafe.errors import ConfigError
            raise ConfigError(f"the organism is not built at {folder.parent}; "
                              "run `thinksafe organism build` first")
        return str(folder)
    check_local_model(path)
    return path


def check_local_model(path: str) -> None:
    """A path that names a local folder (absolute, ./, ../, ~, or an existing folder) must hold a
    model (config.json): a ConfigError otherwise, before anything is loaded or written."""
    from thinksafe.errors import ConfigError
    p = Path(path).expanduser()
    local = path.startswith(("/", "./", "../", "~")) or p.is_dir()
    if not local:
        return                       # a hub id
    if not p.is_dir():
        raise ConfigError(f"model folder not found: {path}")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        raise ConfigError(f"model folder {path} holds no model (no config.json)")


def read_manifest(folder) -> dict:
    """``folder/organism.json`` ({} when the build has none)."""
    import json
    man = Path(folder) / "organism.json"
    return json.loads(man.read_text()) if man.is_file() else {}


def update_manifest(folder, entries: dict, create: bool = True) -> Path:
    """Merge ``entries`` into ``folder/organism.json`` (only if it exists, unless ``create``)."""
    import json
    man = Path(folder) / "organism.json"
    if man.is_file() or create:
        man.write_text(json.dumps({**read_manifest(folder), **entries}, indent=2) + "\n")
    return man

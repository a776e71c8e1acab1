"""Generation backends. transformers always; vLLM only when installed and chosen."""

from __future__ import annotations

from thinksafe.errors import ConfigError


def make_backend(name: str, model: str, adapter: str | None = None, **kwargs):
    if name in ("transformers", "hf"):
        from thinksafe.backends.hf import HFBackend
        return HFBackend(model, adapter=adapter, **kwargs)
    if name == "auto":
        return make_backend("transformers", model, adapter, **kwargs)
    raise ConfigError(f"backend '{name}' is unknown. Known: transformers, auto")

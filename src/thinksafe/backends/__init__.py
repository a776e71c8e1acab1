"""Generation backends: transformers always; vLLM only when installed and chosen."""

from __future__ import annotations

from thinksafe.errors import ConfigError, MissingDependency

KNOWN = ("transformers", "vllm", "auto")


def make_backend(name: str, model: str, adapter: str | None = None, vllm_kwargs: dict | None = None,
                 hf_kwargs: dict | None = None, **kwargs):
    """``auto`` = vLLM when it is installed, transformers otherwise."""
    if name in ("transformers", "hf"):
        from thinksafe.backends.hf import HFBackend
        return HFBackend(model, adapter=adapter, **kwargs, **(hf_kwargs or {}))
    if name in ("vllm", "auto"):
        try:
            from thinksafe.backends.vllm import VLLMBackend
            return VLLMBackend(model, adapter=adapter, **kwargs, **(vllm_kwargs or {}))
        except MissingDependency:
            if name == "vllm":
                raise
            return make_backend("transformers", model, adapter, hf_kwargs=hf_kwargs, **kwargs)
    raise ConfigError(f"model.backend '{name}' is unknown. Known: {', '.join(KNOWN)}")

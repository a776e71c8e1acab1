"""Guards: thin layers over a backend that turn (prompt, response) into fail-closed verdicts."""

from __future__ import annotations

from thinksafe.errors import ConfigError

KINDS = ("llama_guard", "wildguard")


def over_backend(cfg, backend):
    """The guard of ``cfg.kind`` over a backend already built (``runtime.make_guard`` is the factory
    every stage uses: it builds the backend, local, served or on Ray)."""
    if cfg.kind == "llama_guard":
        from thinksafe.guards.llama_guard import LlamaGuard
        return LlamaGuard(backend, top_k=cfg.top_k, max_input_tokens=cfg.max_input_tokens,
                          suffix=cfg.suffix)
    if cfg.kind == "wildguard":
        from thinksafe.guards.wildguard import WildGuard
        return WildGuard(backend, max_input_tokens=cfg.max_input_tokens)
    raise ConfigError(f"guard.kind '{cfg.kind}' is unknown. Known: {', '.join(KINDS)}")

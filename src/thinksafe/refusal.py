"""The over-refusal judge: which guard judges refusals (``evaluate.refusal_guard_*``), and what its
verdict says. Used by evaluation (XSTest) and by ``thinksafe steer`` (false refusals)."""

from __future__ import annotations

from dataclasses import replace


def refusal_of(verdict) -> bool | None:
    """WildGuard's "Response refusal" (True/False), None when missing or n/a."""
    from thinksafe.guards.wildguard import refusal_verdicts
    return refusal_verdicts([verdict])[0]


def refusal_guard_config(cfg):
    """The run config with the guard swapped for the over-refusal guard. When it is another model
    than ``guard``, vLLM takes its own context length (``model.max_model_len`` is for the model
    evaluated) and inputs are shortened to ``evaluate.refusal_guard_max_input_tokens``."""
    e = cfg.evaluate
    if (e.refusal_guard_kind, e.refusal_guard_path) == (cfg.guard.kind, cfg.guard.path):
        return cfg
    return replace(cfg, model=replace(cfg.model, max_model_len=None),
                   guard=replace(cfg.guard, kind=e.refusal_guard_kind, path=e.refusal_guard_path,
                                 max_input_tokens=e.refusal_guard_max_input_tokens, suffix=None))

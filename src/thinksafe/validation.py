"""Every rule a run config must satisfy, checked in one pass when it loads (``load_config`` ->
``validate``), so every command reports the same mistakes, all at once, before anything runs.

Three tables beside the frozen dataclasses of ``config.py``: ``RANGES`` (numbers), ``CHOICES``
(closed sets of values) and ``RULES`` (values that depend on each other). A key that names no field
is an error, not a silently skipped check. None values are not range-checked. Imports nothing of
the package but its errors, so that any module may use the accepted values declared here."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable

from thinksafe.errors import ConfigError

# The accepted values of the closed settings (their one declaration; the trainers import them).
METHODS = ("lora", "full")
OBJECTIVES = ("sft", "kl", "opsa")
TRUNCATIONS = ("drop", "cut")
REPORTERS = ("none", "wandb", "tensorboard")
LM_HEAD_LOSSES = ("auto", "torch", "liger", "cce")
VALIDATIONS = ("auto", "organism", "heldout")
ROUNDS_FROM = ("base", "previous")
DIVERGENCES = ("mixed", "reverse", "forward", "jsd")
CONTEXT_ON = ("harmful", "all")

# (low, low inclusive, high, high inclusive[, note]); None = unbounded. The note goes into the message.
_GE0, _GE1, _GT0 = (0, True, None, False), (1, True, None, False), (0, False, None, False)
_UNIT, _PROB = (0, False, 1, True), (0, True, 1, True)
RANGES: dict[str, tuple] = {
    "model.batch_size": _GE1, "model.tensor_parallel_size": _GE1, "model.max_model_len": _GE1,
    "model.gpu_memory_utilization": _UNIT,
    "guard.top_k": _GE1, "guard.max_input_tokens": _GE1, "guard.batch_size": _GE1, "guard.server_timeout": _GT0,
    "guard.tensor_parallel_size": _GE1, "guard.max_model_len": _GE1, "guard.gpu_memory_utilization": _UNIT,
    "prompts.n_harmful": _GE0, "prompts.limit": _GE1, "prompts.n_reasoning": _GE0, "prompts.n_borderline": _GE0,
    "generate.samples": _GE1, "generate.temperature": _GE0, "generate.top_p": _UNIT, "generate.top_k": _GE0,
    "generate.max_new_tokens": _GE1, "generate.max_attempts": _GE1,
    "dataset.ngram": _GE1,
    "train.lora.r": _GE1, "train.lora.alpha": _GT0, "train.lora.dropout": (0, True, 1, False),
    "train.lr": _GT0, "train.epochs": _GT0, "train.batch_size": _GE1, "train.grad_accum": _GE1,
    "train.warmup_ratio": _PROB, "train.max_grad_norm": _GT0, "train.max_length": _GE1,
    "train.logging_steps": _GE1, "train.kl_chunk_size": (*_GE1, "or null = by memory"),
    "train.ce_chunk_size": (*_GE1, "or null = by memory"), "train.micro_batch_tokens": (*_GE1, "or null = off"),
    "train.save_steps": (*_GE0, "0 = once per epoch"),
    "evaluate.n_harmful": _GE0, "evaluate.n_reasoning": _GE0, "evaluate.n_borderline": _GE0,
    "evaluate.samples": _GE1, "evaluate.max_new_tokens": _GE1, "evaluate.reasoning_max_new_tokens": _GE1,
    "evaluate.temperature": _GE0, "evaluate.top_p": _UNIT, "evaluate.top_k": _GE0, "evaluate.limit": _GE0,
    "evaluate.refusal_guard_max_input_tokens": _GE1,
    "compare.no_steering_samples": _GE1, "compare.external_limit": _GE0, "compare.grpo_budget": _GT0,
    "compare.grpo_target_slack": _GE0,
    "grpo.num_generations": (2, True, None, False, "advantages are relative to the group"),
    "grpo.beta": _GE0, "grpo.epsilon": _GT0, "grpo.lr": _GT0,
    "grpo.warmup_ratio": _PROB, "grpo.epochs": _GT0, "grpo.max_steps": _GE1, "grpo.batch_size": _GE1,
    "grpo.grad_accum": _GE1, "grpo.temperature": _GT0, "grpo.top_p": _UNIT, "grpo.top_k": _GE0,
    "grpo.max_completion_length": _GE1, "grpo.max_flops": _GT0, "grpo.check_every": _GE0,
    "grpo.stop_at_harmful": _PROB, "grpo.save_steps": _GE1, "grpo.logging_steps": _GE1,
    "grpo.validation_fraction": (0, False, 1, False), "grpo.validation_n": _GE1,
    "rounds": _GE1, "opsa.max_new_tokens": _GE1, "opsa.temperature": _GE0,
    "opsa.top_p": _UNIT, "opsa.top_k": _GE0,
    "steer.n_harmful": _GE1, "steer.n_benign": _GE1, "steer.max_false_refusal": _PROB,
    "cluster.replicas": _GE1, "cluster.cpus_per_replica": _GE0, "cluster.gpus_per_replica": _GE0,
    "cluster.max_restarts": _GE0, "cluster.unit_attempts": _GE1,
}
CHOICES: dict[str, tuple] = {
    "prompts.default_label": (None, "harmful", "benign"),
    "dataset.decontaminate": (True, False, "best_effort"),
    "train.method": METHODS, "train.objective": OBJECTIVES, "train.truncation": TRUNCATIONS,
    "train.report_to": REPORTERS, "train.lm_head_loss": LM_HEAD_LOSSES,
    "grpo.vllm_mode": ("colocate", "server"),
    "cluster.engine": ("local", "ray"),
    "rounds_from": ROUNDS_FROM, "opsa.divergence": DIVERGENCES, "opsa.context_on": CONTEXT_ON,
    "steer.flip": ("safe", "refusal"),
}


def layer_range(lc, num_layers: int | None = None) -> list[int] | None:
    """``train.lora.layers: [start, end]`` -> the decoder layer indices start..end-1 (end excluded)."""
    if lc.layers is None:
        return None
    v = lc.layers
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
        raise ConfigError(f"train.lora.layers must be [start, end] (two integers, end excluded), got {v!r}")
    start, end = v
    top = num_layers if num_layers is not None else end
    if not 0 <= start < end <= top:
        limit = f" and end <= {num_layers} (the model's layers)" if num_layers is not None else ""
        raise ConfigError(f"train.lora.layers: need 0 <= start < end{limit}, got {v!r}")
    return list(range(start, end))


def _lora_layers(cfg) -> str | None:
    if cfg.train.method == "lora":
        try:
            layer_range(cfg.train.lora)
        except ConfigError as e:
            return str(e)
    return None


def _grpo_group(cfg) -> str | None:
    g, world = cfg.grpo, int(os.environ.get("WORLD_SIZE", "1"))
    if (g.batch_size * g.grad_accum * world) % g.num_generations:
        return (f"grpo.batch_size x grpo.grad_accum x processes ({g.batch_size} x {g.grad_accum} x "
                f"{world}) must be a multiple of grpo.num_generations ({g.num_generations})")
    return None


def _grpo_stop(cfg) -> str | None:
    if cfg.grpo.stop_at_harmful is not None and cfg.grpo.check_every <= 0:
        return "grpo.stop_at_harmful needs grpo.check_every > 0"
    return None


def _grpo_validation(cfg) -> str | None:
    v = cfg.grpo.validation
    if v not in VALIDATIONS and not Path(v).is_file():
        return f"grpo.validation must be {', '.join(VALIDATIONS)} or a prompt file, got {v!r} (no such file)"
    return None


def _rounds_objective(cfg) -> str | None:
    if cfg.rounds > 1 and cfg.train.objective == "opsa":
        return ("rounds > 1 is iterative ThinkSafe (generated data each round); "
                "train.objective=opsa trains on its own rollouts: use rounds: 1")
    return None


def _rounds_integer(cfg) -> str | None:
    k = cfg.rounds
    return None if isinstance(k, int) and not isinstance(k, bool) else f"rounds must be an integer >= 1, got {k!r}"


def _opsa_jsd(cfg) -> str | None:
    o = cfg.opsa
    if o.divergence == "jsd" and not 0.0 < o.jsd_alpha < 1.0:
        return f"opsa.jsd_alpha must be in (0, 1), got {o.jsd_alpha}"
    return None


def _opsa_mixed(cfg) -> str | None:
    o = cfg.opsa
    if o.divergence == "mixed" and not 0.0 <= o.forward_weight <= 1.0:
        return f"opsa.forward_weight must be in [0, 1], got {o.forward_weight}"
    return None


def _opsa_benign(cfg) -> str | None:
    from thinksafe import steering
    o = cfg.opsa
    try:
        template = steering.resolve_benign(o.benign_context)
    except ConfigError as e:
        return str(e)
    if template is not None and o.context_on == "all":
        return ("opsa.benign_context applies with opsa.context_on: harmful; with all, benign prompts get "
                "opsa.context: set benign_context: none")
    return None


def _opsa_context(cfg) -> str | None:
    from thinksafe import steering
    if cfg.train.objective != "opsa":
        return None
    try:
        text = steering.resolve(cfg.opsa.context)
    except ConfigError as e:
        return f"opsa.context: {e}"
    if text is None:
        return ("opsa.context must be a privileged context (prefix, suffix, opsa or a template with "
                "{prompt}), not none: without it the teacher is the student's own start")
    return None


# (the keys a rule reads, the rule: the config -> a message, or None when it holds)
RULES: list[tuple[tuple[str, ...], Callable[[Any], str | None]]] = [
    (("train.method", "train.lora.layers"), _lora_layers),
    (("grpo.batch_size", "grpo.grad_accum", "grpo.num_generations"), _grpo_group),
    (("grpo.stop_at_harmful", "grpo.check_every"), _grpo_stop),
    (("grpo.validation",), _grpo_validation),
    (("rounds",), _rounds_integer),
    (("rounds", "train.objective"), _rounds_objective),
    (("opsa.divergence", "opsa.jsd_alpha"), _opsa_jsd),
    (("opsa.divergence", "opsa.forward_weight"), _opsa_mixed),
    (("opsa.benign_context", "opsa.context_on"), _opsa_benign),
    (("train.objective", "opsa.context"), _opsa_context),
]


def range_text(key: str) -> str:
    lo, lo_in, hi, hi_in, *note = RANGES[key]
    text = f"{'>=' if lo_in else '>'} {lo}" if hi is None else \
        f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
    return f"{text} ({note[0]})" if note else text


def choice_text(key: str) -> str:
    return ", ".join("null" if a is None else str(a).lower() for a in CHOICES[key])


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            raise ConfigError(f"validation names {key!r}, which is no config field")
        node = getattr(node, part)
    return node


def _in_range(key: str, v) -> str | None:
    lo, lo_in, hi, hi_in, *_ = RANGES[key]
    if v is None or isinstance(v, bool):
        return None
    if (v >= lo if lo_in else v > lo) and (hi is None or (v <= hi if hi_in else v < hi)):
        return None
    return f"{key} must be {range_text(key)}, got {v!r}"


def _in_choices(key: str, v) -> str | None:
    allowed = CHOICES[key]
    if any(v is a or (isinstance(a, str) and v == a) for a in allowed):
        return None
    guess = difflib.get_close_matches(str(v), [str(a) for a in allowed if a is not None], n=1)
    return f"{key} must be one of {choice_text(key)}, got {v!r}" + (f". Did you mean '{guess[0]}'?" if guess else "")


def problems(cfg, section: str | None = None) -> list[str]:
    """Every broken rule of ``cfg`` (a RunConfig), one line each; ``section``: only the rules whose
    keys are all in that section (e.g. "train")."""
    def mine(keys) -> bool:
        return section is None or all(k.split(".", 1)[0] == section for k in keys)
    out = [_in_range(k, _get(cfg, k)) for k in RANGES if mine([k])]
    out += [_in_choices(k, _get(cfg, k)) for k in CHOICES if mine([k])]
    for keys, rule in RULES:
        if mine(keys):
            for k in keys:
                _get(cfg, k)           # a rule's keys name fields too
            out.append(rule(cfg))
    return [p for p in out if p]


def raise_problems(found: list[str]) -> None:
    if found:
        err = ConfigError("\n".join(found))
        err.problems = found
        raise err


def check_section(name: str, section) -> None:
    """The rules of one section, for a section on its own (e.g. ``check_section("train", cfg.train)``)."""
    from types import SimpleNamespace
    raise_problems(problems(SimpleNamespace(**{name: section}), name))


def validate(cfg):
    """``cfg`` when every rule holds, else a ConfigError listing each broken one (``.problems``)."""
    raise_problems(problems(cfg))
    return cfg

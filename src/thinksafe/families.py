"""Model-family quirks in one place: chat-template kwargs, generation prefill, sampling presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thinksafe.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Text the generation prompt already ends with (R1-Distill: "<think>\n"); the stored response gets it back.
    prefill: str = ""
    # A reasoning block closed by </think>: reasoning benchmarks read the answer after it. False: the
    # whole response is the answer (an instruct model, Qwen3 with thinking off, a plain baseline).
    thinks: bool = True


FAMILIES: dict[str, Family] = {
    "qwen3": Family("qwen3", top_k=20, template_kwargs={"enable_thinking": True}),
    "r1_distill": Family("r1_distill", top_k=0, prefill="<think>\n"),
    "organism": Family("organism", top_k=20, template_kwargs={"enable_thinking": True}),
    "generic": Family("generic", thinks=False),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"model family '{name}' is unknown. Known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def restore_prefill(family: Family, text: str) -> str:
    """Give a response back the part of it that the generation prompt already held."""
    if family.prefill and not text.startswith(family.prefill.strip()):
        return family.prefill + text
    return text

"""The shared vocabulary: records, completions, verdicts and sampling settings."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

Chat = list[dict[str, str]]

SAFE, UNSAFE, UNPARSED = "safe", "unsafe", "unparsed"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20            # 0 = off
    max_new_tokens: int = 16384
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str         # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Verdict:
    label: str                 # "safe" | "unsafe" | "unparsed"; unparsed never counts as safe
    score: float | None = None  # P(safe) when available
    category: str | None = None
    guard: str = ""
    truncated_tokens: int = 0
    raw: str = ""
    input_tokens: int | None = None   # tokens the guard was given (counted when rendered); None = unknown

    @property
    def is_safe(self) -> bool:
        return self.label == SAFE


@dataclass(frozen=True)
class Record:
    id: str
    prompt: str                # the ORIGINAL prompt, never the steering text
    label: str                 # "harmful" | "benign" | benchmark-specific
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    steering: str | None = None          # template name used for generation, None = unsteered
    sample: int = 0
    completion: Completion | None = None
    verdict: Verdict | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("completion") is not None:
            d["completion"] = Completion(**d["completion"])
        if d.get("verdict") is not None:
            d["verdict"] = Verdict(**d["verdict"])
        return cls(**d)


def stable_id(*parts: object) -> str:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return h[:16]

"""Drop training prompts that overlap an evaluation prompt: a shared word n-gram (13, as STAR-1
does) or, for prompts shorter than n words, the same normalised text."""

from __future__ import annotations

import re
from collections.abc import Iterable

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


class Decontaminator:
    def __init__(self, eval_prompts: Iterable[str], n: int = 13):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self.exact: set[str] = set()
        for p in eval_prompts:
            self.grams |= ngrams(p, n)
            self.exact.add(" ".join(words(p)))

    def overlaps(self, prompt: str) -> bool:
        return " ".join(words(prompt)) in self.exact or not self.grams.isdisjoint(ngrams(prompt, self.n))


def evaluation_prompts(cfg) -> tuple[list[str], list[str]]:
    """Prompts of every configured evaluation benchmark; (prompts, benchmarks that could not load)."""
    from thinksafe.errors import ThinksafeError
    from thinksafe.stages.evaluate import resolve_benchmarks
    prompts, missing = [], []
    for name in resolve_benchmarks(cfg.evaluate.benchmarks):     # "paper" = the paper's eight
        if name == "organism":
            from thinksafe.stages.evaluate import eval_records
            prompts += [r.prompt for r in eval_records(cfg)]
            continue
        try:
            from thinksafe.benchmarks import load
            prompts += [r.prompt for r in load(name)]
        except ThinksafeError:
            missing.append(name)
    return prompts, missing

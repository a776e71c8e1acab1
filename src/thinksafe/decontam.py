"""Drop training prompts that overlap an evaluation prompt: a shared word n-gram (13, as STAR-1
does) or, for prompts shorter than n words, the same normalised text.

The evaluation prompts are those of ``evaluate.benchmarks``, resolved exactly as the evaluation
resolves them (``paper``, ``wildjailbreak_250``, ``evaluate.data_dir``). A benchmark that cannot
load is an error, unless ``dataset.decontaminate: best_effort`` (then it is listed as unavailable
in ``dataset_stats.json``); a gated benchmark whose file is absent is skipped, as evaluation skips
it, and listed too."""

from __future__ import annotations

import re
from collections.abc import Iterable

from thinksafe.errors import ConfigError, DataError, ThinksafeError

WORD = re.compile(r"\w+")
MODES = (True, False, "best_effort")


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


def evaluation_prompts(cfg) -> tuple[list[str], dict]:
    """Prompts of every configured evaluation benchmark (all of each, whatever ``evaluate.limit``)
    and what was found: ``{"benchmarks": {name: prompts}, "skipped": {...}, "unavailable": {...}}``."""
    from thinksafe.evalsets import (GATED, benchmark_provenance, eval_records, load_benchmark,
                                    resolve_benchmarks)
    mode = cfg.dataset.decontaminate
    if mode not in MODES:
        raise ConfigError(f"dataset.decontaminate must be true, false or best_effort, got {mode!r}")
    prompts: list[str] = []
    info: dict = {"benchmarks": {}, "skipped": {}, "unavailable": {}}
    for name in resolve_benchmarks(cfg.evaluate.benchmarks):
        try:
            got = [r.prompt for r in eval_records(cfg)] if name == "organism" else \
                [r.prompt for r in load_benchmark(name, cfg.evaluate.data_dir, None)]
        except ThinksafeError as e:
            if name in GATED and isinstance(e, DataError):
                info["skipped"][name] = f"gated file absent (evaluation skips it too): {e}"
                continue
            if mode != "best_effort":
                raise DataError(f"dataset: cannot decontaminate against '{name}': {e} (set "
                                "dataset.decontaminate: best_effort to go on without it, recorded "
                                "in dataset_stats.json)") from None
            info["unavailable"][name] = str(e)
            continue
        info["benchmarks"][name] = len(got)
        if name != "organism":
            info.setdefault("sources", {})[name] = benchmark_provenance(name, cfg.evaluate.data_dir)
        prompts += got
    return prompts, info

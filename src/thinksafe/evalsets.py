"""The evaluation's prompt sets, shared by evaluate, dataset (decontamination) and grpo (checks):
benchmark names (``paper``, virtual subsets), their loaders, and the organism's held-out and
validation prompts.

Lives below ``thinksafe.stages`` so that no stage imports another."""

from __future__ import annotations

import difflib
from dataclasses import replace

from thinksafe.errors import ConfigError
from thinksafe.generation import expand
from thinksafe.prompts import organism_records
from thinksafe.types import Record

PAPER_BENCHMARKS = ["harmbench", "strongreject", "wildjailbreak", "xstest",
                    "aime24", "gsm8k", "math500", "gpqa_diamond"]
# Virtual benchmarks: name -> (module, load kwargs, folder whose generations/verdicts it shares).
VIRTUAL = {"wildjailbreak_250": ("wildjailbreak", {"subset": 250}, "wildjailbreak")}
GATED = {"gpqa_diamond"}       # skipped (and recorded) when the file is absent


def resolve_benchmarks(names: list[str]) -> list[str]:
    """Expand ``paper``; check every name; keep the order, drop repeats."""
    from thinksafe import benchmarks as B
    known = ["organism", "paper", *B.BENCHMARKS, *VIRTUAL]
    out: list[str] = []
    for name in names:
        for n in (PAPER_BENCHMARKS if name == "paper" else [name]):
            if n not in known:
                guess = difflib.get_close_matches(n, known, n=1)
                hint = f" Did you mean '{guess[0]}'?" if guess else ""
                raise ConfigError(f"evaluate.benchmarks: unknown benchmark '{n}'.{hint} "
                                  f"Known: {', '.join(known)}")
            if n not in out:
                out.append(n)
    return out


def kind_of(name: str) -> str:
    from thinksafe import benchmarks as B
    if name == "organism":
        return "organism"
    return B.get(VIRTUAL[name][0] if name in VIRTUAL else name).KIND


def store_of(name: str) -> str:
    """The folder holding a benchmark's generations and verdicts."""
    return VIRTUAL[name][2] if name in VIRTUAL else name


def load_benchmark(name: str, data_dir, limit: int | None) -> list[Record]:
    """Prompts of one benchmark (XSTest: ``limit`` safe + ``limit`` unsafe)."""
    from thinksafe import benchmarks as B
    if name in VIRTUAL:
        module, kwargs, _ = VIRTUAL[name]
        return B.load(module, data_dir, limit, **kwargs)
    if name == "xstest":
        return B.load(name, data_dir, limit, split="safe") + B.load(name, data_dir, limit, split="unsafe")
    return B.load(name, data_dir, limit)


def benchmark_provenance(name: str, data_dir) -> dict:
    """The file benchmark ``name`` is read from: path, sha256, pinned source, checksum verdict."""
    from thinksafe import benchmarks as B
    return B.data_provenance(VIRTUAL[name][0] if name in VIRTUAL else name, data_dir)


def eval_records(cfg) -> list[Record]:
    """The organism's held-out evaluation prompts (``evaluate.n_*``), expanded to samples."""
    e = cfg.evaluate
    return expand(organism_records(cfg.seed, "eval", e.n_reasoning, e.n_harmful, e.n_borderline),
                  e.samples or 1)


def eval_config(cfg):
    """The run config with the evaluation sampling in the ``generate`` section (None = family preset)."""
    e = cfg.evaluate
    return replace(cfg, generate=replace(cfg.generate, temperature=e.temperature, top_p=e.top_p,
                                         top_k=e.top_k))

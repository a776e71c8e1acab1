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


REASONING_SAMPLES = 8          # the paper's n for pass@1


def max_new_tokens_for(cfg, kind: str) -> int:
    e = cfg.evaluate
    if kind == "reasoning" and e.reasoning_max_new_tokens:
        return e.reasoning_max_new_tokens
    return e.max_new_tokens


def samples_for(cfg, kind: str) -> int:
    if kind == "reasoning":
        return cfg.evaluate.samples or REASONING_SAMPLES
    return 1                       # safety / over-refusal: one sample per prompt, as the paper


def saved_settings(cfg, adapter, kind: str) -> dict:
    """What a benchmark's saved generations and verdicts depend on (``settings.json`` beside them);
    the evaluate stage moves saved files made with other values aside."""
    from thinksafe.families import get_family
    from thinksafe.runtime import sampling
    fam = get_family(cfg.model.family)
    e = cfg.evaluate
    p = sampling(eval_config(cfg).generate, fam, cfg.seed, max_new_tokens_for(cfg, kind))
    s = {"generation": {"model": cfg.model.path, "adapter": str(adapter) if adapter else None,
                        "family": fam.name, "temperature": p.temperature, "top_p": p.top_p,
                        "top_k": p.top_k, "max_new_tokens": p.max_new_tokens, "seed": cfg.seed}}
    if kind == "safety":          # everything that changes a verdict
        g = cfg.guard
        s["guard"] = {"kind": g.kind, "path": g.path, "top_k": g.top_k,
                      "max_input_tokens": g.max_input_tokens, "suffix": g.suffix}
    if kind == "overrefusal":
        s["refusal_guard"] = {"kind": e.refusal_guard_kind, "path": e.refusal_guard_path}
    return s

"""Shared plumbing for stages: model loading by config, chat rendering, sampling, progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from thinksafe.families import Family, get_family
from thinksafe.organism import resolve_model_path
from thinksafe.types import SamplingParams


def render_prompt(tokenizer, text: str, family: Family) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True, **family.template_kwargs)


def sampling(cfg_gen, family: Family, seed: int, max_new_tokens: int | None = None) -> SamplingParams:
    return SamplingParams(
        temperature=family.temperature if cfg_gen.temperature is None else cfg_gen.temperature,
        top_p=family.top_p if cfg_gen.top_p is None else cfg_gen.top_p,
        top_k=family.top_k if cfg_gen.top_k is None else cfg_gen.top_k,
        max_new_tokens=max_new_tokens or cfg_gen.max_new_tokens,
        seed=seed)


def model_backend(cfg, adapter: str | None = None):
    from thinksafe.backends import make_backend
    if getattr(getattr(cfg, "cluster", None), "engine", "local") == "ray":    # replicas, no model here
        from thinksafe.cluster_clients import RayGenerator
        return RayGenerator(cfg, adapter, build=model_backend)    # replicas: engine local
    m = cfg.model
    return make_backend(m.backend, resolve_model_path(m.path), adapter=adapter,
                        batch_size=m.batch_size, dtype=m.dtype, device=m.device,
                        vllm_kwargs=_vllm_kwargs(m, cfg.seed), hf_kwargs={"generation": m.generation})


def student_backend(cfg):
    """The model that writes training data: the base, or ``cfg.student`` (iterative rounds: the
    previous round's LoRA adapter on ``model.path``, or its fully fine-tuned model folder)."""
    student = getattr(cfg, "student", None)
    if not student:
        return model_backend(cfg)
    from pathlib import Path
    if (Path(student) / "adapter_config.json").is_file():
        return model_backend(cfg, student)
    return model_backend(replace(cfg, model=replace(cfg.model, path=student)))


def _vllm_kwargs(m, seed: int) -> dict:
    return {"tensor_parallel_size": m.tensor_parallel_size, "max_model_len": m.max_model_len,
            "gpu_memory_utilization": m.gpu_memory_utilization, "seed": seed,
            **({"enforce_eager": True} if m.enforce_eager else {})}


def make_guard(cfg):
    """The one guard factory: ``cfg.guard`` on its backend (local, served, or replicas on Ray)."""
    from thinksafe.backends import make_backend
    from thinksafe.guards import over_backend
    g = cfg.guard
    if getattr(getattr(cfg, "cluster", None), "engine", "local") == "ray" and not g.server_url:
        from thinksafe.cluster_clients import RayGuard
        return RayGuard(cfg, build=make_guard)
    if g.server_url:                # served (vLLM's OpenAI-compatible server), health-checked here
        from thinksafe.backends.server import ServerBackend
        backend = ServerBackend(g.server_url, resolve_model_path(g.path), model_name=g.server_model or g.path,
                                timeout=g.server_timeout, batch_size=g.batch_size)
        return over_backend(g, backend)
    backend = make_backend(g.backend or cfg.model.backend, resolve_model_path(g.path),
                           batch_size=g.batch_size, dtype=cfg.model.dtype, device=cfg.model.device,
                           vllm_kwargs=guard_vllm_kwargs(g, cfg.seed), what="guard")
    return over_backend(g, backend)


def guard_vllm_kwargs(g, seed: int) -> dict:
    """The guard's own vLLM engine: it reads at most max_input_tokens plus a few verdict tokens."""
    return {"tensor_parallel_size": g.tensor_parallel_size,
            "max_model_len": g.max_model_len or (g.max_input_tokens + 64 if g.max_input_tokens else None),
            "gpu_memory_utilization": g.gpu_memory_utilization, "seed": seed,
            **({"enforce_eager": True} if g.enforce_eager else {})}


def release(obj) -> None:
    """The one way to free a model, guard or backend: its engine (vLLM's, a Ray pool's: ``close`` or
    ``shutdown``) now, then Python's garbage and CUDA's cached memory. A transformers model has no
    engine: it goes with its last reference, and the cache is emptied here."""
    from thinksafe.memory import release_memory
    for target in (obj, getattr(obj, "backend", None)):
        stop = getattr(target, "close", None) or getattr(target, "shutdown", None)
        if callable(stop):
            stop()
            break
    release_memory()


def has_engine(obj) -> bool:
    """True when ``release`` would free something (a vLLM engine)."""
    return any(callable(getattr(t, "close", None)) for t in (obj, getattr(obj, "backend", None)))


def family_of(cfg) -> Family:
    return get_family(cfg.model.family)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    if not enabled:
        yield lambda n: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)


def with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    return replace(params, seed=seed)

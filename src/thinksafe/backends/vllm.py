"""vLLM backend: a thin adapter with the same protocol as HFBackend.

``generate(prompts, params)`` gets prompts already rendered with the chat template (all prompt
building stays in shared code) and returns one Completion per prompt, in the same order.

API shapes used (checked against vLLM's docs and source, vllm-project/vllm ``vllm/outputs.py``):
``LLM.generate(prompts, sampling_params, use_tqdm=..., lora_request=...)`` returns one
``RequestOutput`` per prompt in input order, with ``.prompt_token_ids`` and ``.outputs[0]``
(``CompletionOutput``: ``.text``, ``.token_ids``, ``.finish_reason`` in {"stop", "length",
"abort"}, ``.logprobs``: one ``{token_id: Logprob(.logprob)}`` per generated token);
``SamplingParams(temperature, top_p, top_k, max_tokens, seed, logprobs)``, where top_k -1
disables top-k in every version (newer versions also accept 0) and ``logprobs`` is capped by
the engine's ``max_logprobs`` (default 20); ``LoRARequest(lora_name, lora_int_id, path)``
(docs.vllm.ai "Using LoRA adapters"), with ``LLM(enable_lora=True, max_lora_rank=...)`` where
max_lora_rank is one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (vllm/config/lora.py).

Prompts are sent as token ids (``{"prompt_token_ids": ...}``, vLLM's TokensPrompt), tokenized
with ``add_special_tokens=False`` like HFBackend: vLLM tokenizes text prompts with
``add_special_tokens=True``, which doubles the BOS of templates that already hold it
(Llama-3 / R1-Distill; vllm-project/vllm#27486).

Seeds: vLLM seeds each request's own generator with its ``SamplingParams.seed``, so requests that
share a seed draw the SAME random numbers: sampled the same way, similar prompts make the same
choices and a benchmark's 200 "samples" act like a handful (the organism's harmful rate read 0.70
instead of 0.44). Every request therefore gets ``prompt_offset(prompt) + params.seed +
shard_index``: a per-prompt offset (a hash of the prompt's token ids, whatever else is in the call,
so a rerun of what is missing samples the same), plus the shard so that data-parallel copies of
the same run do not sample identical text (vllm-project/vllm#11953); a prompt repeated within one
call gets a further derived seed for each repeat, so repeats are distinct samples, as with
HFBackend.
vllm is imported only inside the constructor.

Throughput: ``stream(prompts, params, n)`` hands every request to the engine at once
(``LLM.enqueue``) and steps the engine itself (``llm_engine.step()``, as ``LLM.generate`` does),
yielding each request's completions the moment it finishes, so the scheduler batches
continuously while the caller writes results as they come (crash safety). ``n`` samples of a
prompt are one request (``SamplingParams(n=k)``: one prompt, k children sharing its prefix);
vLLM gives child i the seed ``seed + i`` (vllm/v1/engine/parallel_sampling.py), so sample i of a
request with seed S is the same as a single-sample request with seed S + i (the per-prompt
offset is added to S, so this holds for the caller's seeds too).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from thinksafe.errors import MissingDependency
from thinksafe.types import Completion, SamplingParams

INSTALL_HINT = "vllm is not installed: pip install 'thinksafe[vllm]'"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _repeat_seed(seed: int, k: int) -> int:
    return int(hashlib.sha256(f"{seed}:repeat:{k}".encode()).hexdigest()[:8], 16)


def prompt_offset(ids: Sequence[int]) -> int:
    """A per-prompt seed offset (< 2**28) from the prompt's token ids: distinct prompts get
    unrelated random streams; the same prompt always the same offset."""
    return int(hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:7], 16)


def lora_rank_for(adapter: str | Path, default: int = 64) -> int:
    """The smallest vLLM max_lora_rank that holds the adapter's rank (from adapter_config.json)."""
    try:
        r = int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return default
    for allowed in LORA_RANKS:
        if allowed >= r:
            return allowed
    return r   # larger than vLLM allows: let vLLM report it


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
        return bool(current_platform.is_cpu())
    except Exception:      # noqa: BLE001 - a stub or an older layout: assume an accelerator
        return False


def _checkpoint_dtype(path: str) -> str | None:
    """The dtype a local checkpoint's config.json declares (``dtype``, or the older
    ``torch_dtype``); None for a hub id or a config without one."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("dtype") or cfg.get("torch_dtype")


def finish_reason(reason: str | None) -> str:
    """vLLM's "stop" stays "stop"; "length", "abort" and None are not a clean finish -> "length"."""
    return "stop" if reason == "stop" else "length"


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str | Path, adapter: str | Path | None = None,
                 tensor_parallel_size: int = 1, seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, batch_size: int = 256, shard_index: int = 0,
                 max_lora_rank: int | None = None, dtype: str = "auto", device: str = "auto",
                 tokenizer=None, **llm_kwargs):
        try:
            import vllm
        except ModuleNotFoundError as e:
            if (e.name or "vllm").split(".")[0] != "vllm":
                raise           # vllm is there but one of its own dependencies is missing
            raise MissingDependency(INSTALL_HINT) from e
        self.model_path = str(model)
        self.batch_size = batch_size
        self.shard_index = shard_index
        self._SamplingParams = vllm.SamplingParams
        if dtype == "auto" and _on_cpu() and _checkpoint_dtype(self.model_path) == "float32":
            # vLLM's "auto" casts a float32 checkpoint to bfloat16; on CPU keep float32, as the
            # transformers backend does there (the same model reads the same on both backends)
            dtype = "float32"
        kwargs = dict(model=self.model_path, tensor_parallel_size=tensor_parallel_size,
                      seed=seed + shard_index, gpu_memory_utilization=gpu_memory_utilization,
                      dtype=dtype)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.lora_request = None
        if adapter:
            from vllm.lora.request import LoRARequest
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank or lora_rank_for(adapter))
            self.lora_request = LoRARequest("adapter", 1, str(adapter))
        if _on_cpu() and "enable_chunked_prefill" not in llm_kwargs:
            # vLLM's CPU build fails on a seeded request whose prefill was split over steps
            # ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync): keep
            # every prompt's prefill whole
            kwargs.update(enable_chunked_prefill=False)
        kwargs.update(llm_kwargs)
        # `device` is accepted for make_backend compatibility; vLLM picks its own device.
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()

    # ------------------------------------------------------------------ helpers
    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        return [list(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]

    @property
    def chunk_hint(self) -> int:
        """Requests worth handing over at once when a caller works in chunks: a few times the
        number of sequences the scheduler runs together."""
        try:
            return 8 * int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        except (AttributeError, TypeError, ValueError):
            return 8 * self.batch_size

    def _make_params(self, params: SamplingParams, seed: int, n: int = 1, **extra):
        return self._SamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                                    top_k=params.top_k if params.top_k > 0 else -1,
                                    max_tokens=params.max_new_tokens, seed=seed, **extra)

    def _submit(self, ids: list[list[int]], sampling) -> Iterator[tuple[int, object]]:
        """Every request to the engine at once; yields (index, RequestOutput) as each finishes.
        Requests still running when the consumer stops (an error, a kill of the caller's loop)
        are aborted, so the engine is clean for the next call."""
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("the vLLM engine still has requests of an earlier call")
        kwargs = {"use_tqdm": False}
        if self.lora_request is not None:
            kwargs["lora_request"] = self.lora_request
        # enqueue returns the engine's internal ids ("<id>-<8 random chars>"); outputs and
        # abort_request use the caller's ("<id>")
        req_ids = [rid.rsplit("-", 1)[0] for rid in
                   self.llm.enqueue([{"prompt_token_ids": i} for i in ids], sampling, **kwargs)]
        index = {rid: k for k, rid in enumerate(req_ids)}
        pending = set(req_ids)
        try:
            while pending and engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished or out.request_id not in index:
                        continue
                    k = index[out.request_id]
                    got = getattr(out, "prompt_token_ids", None)
                    if got is not None and list(got) != ids[k]:
                        raise RuntimeError(f"vLLM output {k} belongs to another prompt")
                    pending.discard(out.request_id)
                    yield k, out
        finally:
            if pending:
                engine.abort_request(list(pending))
        if pending:
            raise RuntimeError(f"vLLM finished without {len(pending)} of {len(ids)} requests")

    def _run(self, ids: list[list[int]], sampling) -> list:
        """All requests at once; the outputs in input order."""
        outs: list = [None] * len(ids)
        for k, out in self._submit(ids, sampling):
            outs[k] = out
        return outs

    def _seeds(self, params: SamplingParams, prompts: Sequence[str], ids: list[list[int]]) -> list[int]:
        base = params.seed + self.shard_index
        seen: Counter[str] = Counter()
        seeds = []
        for p, i in zip(prompts, ids):
            k = seen[p]
            seen[p] += 1
            seeds.append(prompt_offset(i) + (base if k == 0 else _repeat_seed(base, k)))
        return seeds

    def _sampling(self, params: SamplingParams, prompts: Sequence[str], ids: list[list[int]], **extra):
        seeds = self._seeds(params, prompts, ids)
        if len(set(seeds)) == 1:
            return self._make_params(params, seeds[0], **extra)
        return [self._make_params(params, s, **extra) for s in seeds]

    def _completions(self, out, n_sent: int) -> list[Completion]:
        got = getattr(out, "prompt_token_ids", None)
        n_prompt = len(got) if got is not None else n_sent
        return [Completion(c.text, finish_reason(c.finish_reason), n_prompt, len(c.token_ids))
                for c in sorted(out.outputs, key=lambda c: getattr(c, "index", 0))]

    # ------------------------------------------------------------------ protocol
    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 progress: Callable[[int], None] | None = None, ignore_eos: bool = False) -> list[Completion]:
        """``ignore_eos`` (benchmarks only) generates exactly max_new_tokens per prompt."""
        if not prompts:
            return []
        ids = self._encode(prompts)
        result: list = [None] * len(prompts)
        sampling = self._sampling(params, prompts, ids, **({"ignore_eos": True} if ignore_eos else {}))
        for k, out in self._submit(ids, sampling):
            result[k] = self._completions(out, len(ids[k]))[0]
            if progress:
                progress(1)
        return result

    def stream(self, prompts: Sequence[str], params: Sequence[SamplingParams],
               n: Sequence[int]) -> Iterator[tuple[int, list[Completion]]]:
        """Request k: ``n[k]`` samples of ``prompts[k]`` with ``params[k]`` (its seed + the shard
        index; sample i gets that + i). Yields (k, n[k] completions in sample order) as requests
        finish, in finishing order. Seeds are the caller's: repeated prompts are not reseeded."""
        if not prompts:
            return
        if not (len(prompts) == len(params) == len(n)):
            raise ValueError("stream: prompts, params and n must have the same length")
        ids = self._encode(prompts)
        sampling = [self._make_params(p, prompt_offset(i) + p.seed + self.shard_index, k)
                    for i, p, k in zip(ids, params, n)]
        for k, out in self._submit(ids, sampling):
            comps = self._completions(out, len(ids[k]))
            if len(comps) != n[k]:
                raise RuntimeError(f"vLLM returned {len(comps)} samples for a request of {n[k]}")
            yield k, comps

    def next_token_logprobs(self, prompts: Sequence[str], top_k: int = 5,
                            continue_tokens: int = 0) -> list[tuple[dict[int, float], str]]:
        """Top-k next-token logprobs per prompt, plus an optional greedy continuation."""
        if not prompts:
            return []
        sampling = self._SamplingParams(max_tokens=max(1, continue_tokens), temperature=0.0,
                                        logprobs=top_k)
        outs = self._run(self._encode(prompts), sampling)
        result = []
        for o in outs:
            c = o.outputs[0]
            first = c.logprobs[0] if c.logprobs else None
            lp = {int(t): float(getattr(v, "logprob", v)) for t, v in (first or {}).items()}
            # vLLM adds the sampled token to the top-k; keep exactly the k best, as HFBackend does
            lp = dict(sorted(lp.items(), key=lambda kv: kv[1], reverse=True)[:top_k])
            result.append((lp, c.text if continue_tokens > 0 else ""))
        return result

    def close(self) -> None:
        """Shut the engine down (its worker processes and memory) before another model loads."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        try:     # an engine run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) leaves its groups
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        except Exception:     # noqa: BLE001 - best effort, never masks the caller's work
            pass
        from thinksafe.memory import release_memory
        release_memory()

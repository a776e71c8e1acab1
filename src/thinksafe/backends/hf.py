"""transformers backend: batched generation with left padding, grouped by prompt length."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinksafe.types import Completion, SamplingParams


def _batch_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)


def load_tokenizer(path: str | Path):
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def causal_lm(path: str | Path, dtype):
    """The one way a causal LM's weights are loaded: safetensors only, and no Hub kernels.

    transformers (>= 5.2x) installs ``kernels`` and, by default, swaps layers for kernels it downloads from
    the Hub when a model is put in train/eval mode: code fetched at run time (we load no remote code unless
    asked), and offline (``HF_HUB_OFFLINE=1``) it fails the first ``model.train()`` on a GPU.
    """
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True, use_kernels=False)


def load_model(path: str | Path, adapter: str | Path | None = None, dtype: str = "auto",
               device: str = "auto"):
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model = causal_lm(path, getattr(torch, dtype))
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter))
    model.to(device).eval()
    return model


class HFBackend:
    """One protocol for every backend: ``generate(prompts, params)`` returns one Completion per
    prompt, in the same order. Prompts are already rendered with the model's chat template."""

    name = "transformers"

    MODES = ("generate", "static", "continuous")

    def __init__(self, model_path: str | Path, adapter: str | Path | None = None,
                 batch_size: int = 32, dtype: str = "auto", device: str = "auto",
                 model=None, tokenizer=None, generation: str = "generate"):
        if generation not in self.MODES:
            from thinksafe.errors import ConfigError
            raise ConfigError(f"model.generation '{generation}' is unknown. Known: {', '.join(self.MODES)}")
        self.model_path = str(model_path)
        self.tokenizer = tokenizer or load_tokenizer(model_path)
        self.model = model or load_model(model_path, adapter, dtype, device)
        self.batch_size = batch_size
        self.generation = generation

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _batches(self, prompts: Sequence[str]):
        enc = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (len(enc[i]), i))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield idx, [enc[i] for i in idx]

    def _pad(self, seqs: list[list[int]]):
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    def _completion(self, toks: list[int], n_prompt: int, eos: int | None) -> Completion:
        if eos is not None and eos in toks:
            toks = toks[:toks.index(eos)]
            return Completion(self.tokenizer.decode(toks, skip_special_tokens=True), "stop", n_prompt, len(toks) + 1)
        toks = [t for t in toks if t != self.tokenizer.pad_token_id]
        return Completion(self.tokenizer.decode(toks, skip_special_tokens=True), "length", n_prompt, len(toks))

    def _sampling_kwargs(self, params: SamplingParams, eos: int | None) -> dict:
        sample = params.temperature > 0
        kwargs = dict(do_sample=sample, max_new_tokens=params.max_new_tokens,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k if params.top_k > 0 else None)
        return kwargs

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 progress: Callable[[int], None] | None = None, ignore_eos: bool = False) -> list[Completion]:
        """``ignore_eos`` (benchmarks only) generates exactly max_new_tokens per prompt."""
        eos = None if ignore_eos else self.tokenizer.eos_token_id
        if self.generation == "continuous":
            return self._generate_continuous(prompts, params, eos, progress)
        out: list[Completion | None] = [None] * len(prompts)
        for idx, seqs in self._batches(prompts):
            ids, mask = self._pad(seqs)
            torch.manual_seed(_batch_seed(params.seed, prompts[idx[0]] + str(len(idx))))
            kwargs = self._sampling_kwargs(params, eos)
            if self.generation == "static":
                kwargs["cache_implementation"] = "static"
            gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            new = gen[:, ids.shape[1]:].tolist()
            for j, i in enumerate(idx):
                out[i] = self._completion(new[j], len(seqs[j]), eos)
            if progress:
                progress(len(idx))
        return out  # type: ignore[return-value]

    def _generate_continuous(self, prompts, params, eos, progress) -> list[Completion]:
        """transformers' continuous batching (paged KV cache, requests join and leave every step)."""
        from transformers.generation import ContinuousBatchingConfig, GenerationConfig
        seqs = [self.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
        gen_cfg = GenerationConfig(**self._sampling_kwargs(params, eos))
        cb_cfg = ContinuousBatchingConfig(seed=params.seed, use_cuda_graph=self.device.type == "cuda",
                                          max_requests_per_batch=max(self.batch_size, 1))
        results = self.model.generate_batch(inputs=seqs, generation_config=gen_cfg,
                                            continuous_batching_config=cb_cfg, progress_bar=False)
        ordered = list(results.values())
        if len(ordered) != len(prompts) or any(r.error for r in ordered):
            raise RuntimeError(f"continuous batching returned {len(ordered)} results for {len(prompts)} "
                               "prompts (or failed requests)")
        if progress:
            progress(len(prompts))
        return [self._completion(list(r.generated_tokens), len(s), eos) for r, s in zip(ordered, seqs)]

    def last_logits(self, ids, mask):
        """(batch, vocab) fp32 logits of the LAST position only: the decoder's hidden states go
        through the LM head at one position (``logits_to_keep=1``), never ``seq x vocab`` logits."""
        try:
            out = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        except TypeError:           # a model whose forward has no logits_to_keep
            from thinksafe.trainers.loss import causal_lm_parts
            decoder, head = causal_lm_parts(self.model)
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1:, :]
            return head(hidden)[:, -1, :].float()
        return out.logits[:, -1, :].float()

    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[str], top_k: int = 5,
                            continue_tokens: int = 0) -> list[tuple[dict[int, float], str]]:
        """Top-k next-token logprobs per prompt, plus an optional greedy continuation."""
        out: list = [None] * len(prompts)
        for idx, seqs in self._batches(prompts):
            ids, mask = self._pad(seqs)
            logits = self.last_logits(ids, mask)
            logp = torch.log_softmax(logits, dim=-1)
            vals, toks = logp.topk(top_k, dim=-1)
            conts = [""] * len(idx)
            if continue_tokens > 0:
                gen = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                          max_new_tokens=continue_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id)
                conts = self.tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
            for j, i in enumerate(idx):
                out[i] = (dict(zip(toks[j].tolist(), vals[j].tolist())), conts[j])
        return out

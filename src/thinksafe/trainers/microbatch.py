"""Token-budget micro-batches inside the paper's optimiser step (``train.micro_batch_tokens``).

The step stays the paper's: ``batch_size × grad_accum × processes`` examples drawn by the Trainer's own
seeded sampler (the train stage gives the Trainer ``batch_size × grad_accum`` examples per process and
one accumulation step, so the sampler's order, the number of steps per epoch and the learning-rate
schedule are those of ``batch_size`` × ``grad_accum``). The collator packs the step's examples into one
row; :class:`MicroBatchTraining` cuts that row, example by example, into micro-batches of at most
``micro_batch_tokens`` tokens (best-fit decreasing, so a step of short examples is one forward pass) and
runs forward + backward on each. Every loss is already divided by the whole step's response tokens
(``num_items_in_batch``; ThinkSafe+KL: the step's token and row counts), so the summed gradient is the
gradient of the step's one batch, however it was cut. Gradient synchronisation (DDP ``no_sync``, FSDP2
deferred reduction) waits for the last micro-batch, and every process runs the same number of
micro-batches (a process with fewer adds ones that learn nothing), so collectives always pair up.

An example longer than the budget gets a micro-batch of its own (nothing is cut or dropped here).
DeepSpeed is refused (its engine treats every backward of a one-accumulation-step run as a boundary):
use DDP or FSDP2, or ``micro_batch_tokens: null`` there.

Gradient checkpointing for ``train.gradient_checkpointing: null`` (auto) is decided by
:func:`checkpointing_needed` from the budget and the model's shape against the accelerator's memory.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

import torch

from thinksafe.trainers.packing import IGNORE_INDEX, plan_batches

# keys of a packed batch that hold one value per token (shape (1, T)) or per example
_TOKEN_KEYS = ("input_ids", "labels", "position_ids")
_EXAMPLE_KEYS = ("is_benign",)


def plan_micro_batches(seq_lens: Sequence[int], budget: int) -> list[list[int]]:
    """Example indices per micro-batch: at most ``budget`` tokens each (best-fit decreasing), an example
    over the budget alone; the groups in the order of their first example (deterministic)."""
    if budget < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {budget}")
    lens = [int(n) for n in seq_lens]
    alone = [[i] for i, n in enumerate(lens) if n > budget]
    rest = [i for i, n in enumerate(lens) if n <= budget]
    groups = [[rest[j] for j in g] for g in plan_batches([lens[i] for i in rest], budget, shuffle=False)] if rest \
        else []
    return sorted((sorted(g) for g in groups + alone), key=lambda g: g[0])


def _segments(seq_lens: Sequence[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in seq_lens:
        out.append((start, start + int(n)))
        start += int(n)
    return out


def slice_packed(batch: dict[str, Any], examples: Sequence[int], learn: bool = True) -> dict[str, Any]:
    """The packed row of ``examples`` (indices into ``batch["packed_seq_lens"]``) cut out of ``batch``.
    ``learn=False``: the same tokens with every label ignored (a micro-batch that contributes nothing)."""
    lens = [int(n) for n in batch["packed_seq_lens"]]
    segs = _segments(lens)
    device = batch["input_ids"].device
    index = torch.cat([torch.arange(*segs[i], device=device) for i in examples])
    out = {k: v for k, v in batch.items() if k not in (*_TOKEN_KEYS, *_EXAMPLE_KEYS)}
    for key in _TOKEN_KEYS:
        if key in batch:
            out[key] = batch[key].index_select(1, index.to(batch[key].device))
    if not learn:
        out["labels"] = torch.full_like(out["labels"], IGNORE_INDEX)
    for key in _EXAMPLE_KEYS:
        if key in batch:
            out[key] = batch[key][torch.as_tensor(list(examples), device=batch[key].device)]
    sub = [lens[i] for i in examples]
    cu_device = batch["cu_seq_lens_q"].device if isinstance(batch.get("cu_seq_lens_q"), torch.Tensor) else device
    cu = torch.tensor([0, *torch.tensor(sub).cumsum(0).tolist()], dtype=torch.int32, device=cu_device)
    out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(sub), max_length_k=max(sub),
               packed_seq_lens=tuple(sub), num_tokens=sum(sub))
    out["num_loss_tokens"] = int((out["labels"] != IGNORE_INDEX).sum())
    return out


def split_step(batch: dict[str, Any], budget: int, count: int | None = None) -> list[dict[str, Any]]:
    """The step's packed row as token-budget micro-batches; ``count``: pad with micro-batches that learn
    nothing (a copy of the shortest example, labels ignored) up to that many."""
    lens = [int(n) for n in batch["packed_seq_lens"]]
    plan = plan_micro_batches(lens, budget)
    parts = [slice_packed(batch, g) for g in plan]
    if count is not None and count > len(parts):
        shortest = min(range(len(lens)), key=lambda i: lens[i])
        parts += [slice_packed(batch, [shortest], learn=False) for _ in range(count - len(parts))]
    return parts


class MicroBatchTraining:
    """Mixin for the packed trainers: ``training_step`` on token-budget micro-batches of the step's row."""

    def _init_micro_batches(self, micro_batch_tokens: int | None) -> None:
        if micro_batch_tokens and getattr(self, "is_deepspeed_enabled", False):
            from thinksafe.errors import ConfigError    # its engine steps at every backward it counts as a boundary
            raise ConfigError("train.micro_batch_tokens is not supported with DeepSpeed; set it to null "
                              "(batch_size x grad_accum accumulation steps) or use DDP / FSDP2")
        self.micro_batch_tokens = micro_batch_tokens
        # optimiser steps, micro-batches (forward passes), real tokens, largest micro-batch: all processes
        self.micro_batch_stats = torch.zeros(4, dtype=torch.long)

    def _plan_step(self, seq_lens) -> int:
        """Plan this process's micro-batches; returns the most any process needs (one collective when
        distributed, which also sums the statistics over processes)."""
        plan = plan_micro_batches(seq_lens, self.micro_batch_tokens)
        sizes = [sum(int(seq_lens[i]) for i in g) for g in plan]
        local = torch.tensor([len(plan), sum(sizes), max(sizes)], device=self.args.device)
        every = self.accelerator.gather(local).view(-1, 3).cpu() if self.accelerator.num_processes > 1 \
            else local.view(1, 3).cpu()
        count = int(every[:, 0].max())
        self.micro_batch_stats += torch.tensor([1, count * every.shape[0], int(every[:, 1].sum()), 0])
        self.micro_batch_stats[3] = max(int(self.micro_batch_stats[3]), int(every[:, 2].max()))
        return count

    def _deferred_sync(self, model):
        """What the Trainer uses around a micro-batch that is not the last of a step."""
        if getattr(self, "is_distributed_loading_by_transformers", False):
            from transformers.distributed.fsdp import is_fsdp_managed_module
            if is_fsdp_managed_module(self.model):
                return self._defer_fsdp_gradient_reduction
        return functools.partial(self.accelerator.no_sync, model=model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.micro_batch_tokens or "packed_seq_lens" not in inputs:
            return super().training_step(model, inputs, num_items_in_batch)
        parts = split_step(inputs, self.micro_batch_tokens, self._plan_step(inputs["packed_seq_lens"]))
        state = self.accelerator.gradient_state
        sync = state.sync_gradients
        total = None
        try:
            for j, part in enumerate(parts):
                last = j == len(parts) - 1
                state._set_sync_gradients(sync if last else False)
                with (contextlib.nullcontext if last else self._deferred_sync(model))():
                    loss = super().training_step(model, part, num_items_in_batch)
                total = loss if total is None else total + loss
        finally:
            state._set_sync_gradients(sync)
        return total


# --------------------------------------------------------------------------- gradient checkpointing: auto
def activation_bytes_per_token(config, dtype_bytes: int = 2, lora_dropout: bool = True) -> int:
    """Bytes autograd keeps per token for one forward pass without checkpointing (all decoder layers).

    Per layer: the residual stream and norms (~6 hidden-wide tensors), q/k/v/attention output and the
    q/k norms (~4 hidden + 2 kv-wide), the MLP's gate, up, activation and product (4 intermediate-wide),
    LoRA dropout masks (2 hidden-wide). An estimate meant to err high; the measured peaks are in
    BENCHMARKS.md."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = cfg.hidden_size
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    kv = (getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    q = heads * head_dim
    inter = getattr(cfg, "intermediate_size", None) or 4 * h
    per_layer = 6 * h + 3 * q + 2 * kv + 4 * inter + (2 * h if lora_dropout else 0)
    return int(per_layer * cfg.num_hidden_layers * dtype_bytes)


def checkpointing_needed(config, tokens: int, free_bytes: int | None, trainable_params: int = 0,
                         weight_bytes: int = 0, logits: bool = False, dtype_bytes: int = 2,
                         headroom: float = 0.7) -> tuple[bool, str]:
    """(checkpoint?, why) for forward passes of ``tokens`` tokens.

    Off when, without checkpointing, one pass's activations (:func:`activation_bytes_per_token`), the
    weights, the optimiser's state (AdamW: 16 bytes per trainable parameter) and, with ``logits`` (the
    padded path's full-vocabulary logits, bf16 + fp32 + softmax), 10 bytes per token and vocabulary
    entry fit in ``headroom`` of the free accelerator memory; on otherwise. ``free_bytes`` None (no
    accelerator): off."""
    if free_bytes is None:
        return False, "no accelerator: gradient checkpointing off"
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    per_token = activation_bytes_per_token(cfg, dtype_bytes) + (10 * cfg.vocab_size if logits else 0)
    need = per_token * int(tokens) + 16 * int(trainable_params) + int(weight_bytes)
    gib = 2 ** 30
    fits = need <= headroom * free_bytes
    return (not fits), (f"{tokens} tokens need ~{need / gib:.1f} GiB without checkpointing (activations, "
                        f"weights, optimiser state); {'fits' if fits else 'does not fit'} in {headroom:.0%} of "
                        f"{free_bytes / gib:.1f} GiB free: gradient checkpointing {'off' if fits else 'on'}")

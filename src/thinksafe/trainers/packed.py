"""Padding-free training for the train stage (``train.packing: true``, the default).

Each micro-batch is still ``train.batch_size`` examples drawn by the Trainer's own seeded random
sampler, so the batches (and the effective batch batch_size × grad_accum × processes) are those of
padded training. Only the layout changes: :class:`~thinksafe.trainers.packing.PackedCollator`
concatenates the examples into one row with no padding, ``position_ids`` restarting at 0 per example,
and the first label of each example ignored (nothing is predicted across a boundary). The base model
attends with :data:`~thinksafe.trainers.varlen.VARLEN_ATTENTION` — causal attention inside each
example (torch's varlen FlashAttention on CUDA, an exact per-example SDPA loop elsewhere) — while the
trainer holds the model; ``train()`` puts the original implementation back when it ends.

* :class:`PackedSFTTrainer` (``objective: sft``): the decoder's last hidden states go through
  :func:`~thinksafe.trainers.loss.chunked_cross_entropy`, which projects only the response positions
  through the LM head, a chunk at a time, and never builds full-vocabulary logits. The loss is the sum
  of the response tokens' cross-entropy divided by ``num_items_in_batch`` (response tokens of the
  whole optimiser step, on every process, as transformers' Trainer counts them) — the token mean over
  the step, so gradient accumulation and DDP give the gradient of one big batch, as TRL's padded loss.
* :class:`PackedKLTrainer` (``objective: kl``): ThinkSafe+KL on the packed row
  (:func:`packed_loss_parts`): harmful examples keep CE, benign examples learn the forward KL against
  the reference (adapter disabled, or the frozen copy for full fine-tuning), which runs on the benign
  examples of the row, packed the same way.

Both keep TRL's ``SFTTrainer`` for everything else (optimiser, scheduler, checkpoints, logging,
accelerate). ``packing_stats`` counts packed rows, their real tokens and the tokens the same
micro-batches would have had right-padded to their longest example (summed over processes).
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

from thinksafe.trainers.kl import (KLTrainer, _redirect, backbone, causal_lm, cross_entropy_per_token,
                                   forward_kl_per_token, frozen_head, gathered, output_head, peft_reference,
                                   softcap_of)
from thinksafe.trainers.loss import chunked_cross_entropy
from thinksafe.trainers.microbatch import MicroBatchTraining
from thinksafe.trainers.packing import IGNORE_INDEX, PackedCollator, packed_model_inputs
from thinksafe.trainers.varlen import VARLEN_ATTENTION, register_varlen_attention, select_varlen_backend


def packing_unsupported(config) -> str | None:
    """Why this model cannot train on packed rows with the varlen attention; None when it can.

    The varlen attention is plain causal attention within each example: no sliding windows, chunked or
    linear attention layers, and no attention dropout."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(cfg, "model_type", "the model")
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        other = sorted({t for t in types if t != "full_attention"})
        if other:
            return f"{kind} has {', '.join(other)} layers; packed attention implements full causal attention only"
    elif getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
        return f"{kind} uses sliding-window attention; packed attention implements full causal attention only"
    if float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return f"{kind} has attention dropout; packed attention does not implement it"
    return None


def _plain_head(head) -> bool:
    """An ``nn.Linear`` LM head whose weight can be read directly: no adapter on it, no bias, not a
    sharded DTensor (FSDP2) or a partitioned ZeRO-3 parameter (those are gathered by calling the module)."""
    if type(head) is not torch.nn.Linear or head.bias is not None or hasattr(head.weight, "ds_id"):
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return True
    return not isinstance(head.weight, DTensor)


def packed_lm_loss(model, batch: dict, *, chunk_size: int | None = None, num_items=None,
                   kernel: str = "torch") -> torch.Tensor:
    """Cross-entropy of a packed row's response tokens: their sum / ``num_items`` (default: their count).

    ``model`` is the unwrapped student (PeftModel or causal LM) with the varlen attention set. A plain LM
    head goes through ``kernel`` (liger | cce, :mod:`thinksafe.trainers.kernels`) or, with ``torch``,
    :func:`chunked_cross_entropy`; anything else (an adapter on the head, a bias, logit soft-capping, a
    sharded weight) through the head module, a checkpointed chunk at a time."""
    kw = packed_model_inputs(batch)
    hidden = backbone(model)(**kw, use_cache=False).last_hidden_state
    head = output_head(model)
    hidden = hidden.to(head.weight.device)
    labels = batch["labels"].to(hidden.device)
    softcap = softcap_of(model)
    y = labels[0, 1:]
    learned = y != IGNORE_INDEX
    denom = num_items if num_items is not None else learned.sum()
    if _plain_head(head) and not softcap and kernel != "torch":
        if not bool(learned.any()):             # e.g. a micro-batch that only keeps collectives paired
            return hidden.sum() * 0.0
        from thinksafe.trainers.kernels import linear_ce_sum
        ce = linear_ce_sum(kernel, hidden[0, :-1][learned], head.weight, y[learned])
        return ce / torch.as_tensor(denom, device=ce.device).clamp(min=1) + hidden.sum() * 0.0
    if _plain_head(head) and not softcap:
        return chunked_cross_entropy(hidden, head.weight, labels, chunk_size=chunk_size, num_items=num_items)
    ce = cross_entropy_per_token(hidden[0, :-1][learned], y[learned], gathered(head), chunk_size, softcap)
    return ce.sum() / torch.as_tensor(denom, device=ce.device).clamp(min=1) + hidden.sum() * 0.0


def _example_index(seq_lens, device) -> torch.Tensor:
    lens = torch.as_tensor([int(n) for n in seq_lens], device=device)
    return torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)


def packed_row_counts(labels: torch.Tensor, is_benign: torch.Tensor, seq_lens) -> torch.Tensor:
    """[ce_tokens, kl_tokens, ce_rows, kl_rows] of a packed row (``rows`` = examples), as
    :func:`thinksafe.trainers.kl.row_counts` gives for the same examples padded."""
    device = labels.device
    example = _example_index(seq_lens, device)
    learned = labels[0] != IGNORE_INDEX
    starts = torch.zeros_like(learned)
    starts[torch.cumsum(torch.as_tensor([0, *[int(n) for n in seq_lens][:-1]], device=device), 0)] = True
    learned = learned & ~starts                       # as labels[:, 1:] of each padded row
    tokens = torch.zeros(len(seq_lens), dtype=torch.long, device=device).index_add_(0, example, learned.long())
    benign = is_benign.bool().to(device)
    return torch.stack([tokens[~benign].sum(), tokens[benign].sum(), (~benign).sum(), benign.sum()]).long()


def packed_loss_parts(model, batch: dict, is_benign: torch.Tensor, ref_hidden=None, ref_head=None,
                      chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """:func:`thinksafe.trainers.kl.loss_parts` for a packed row: CE sums over the harmful examples'
    response tokens, KL sums over the benign examples' (``is_benign``: one flag per example).

    The reference runs on the benign examples only, packed into their own row (same positions)."""
    if ref_hidden is None:
        ref_hidden = peft_reference(model)
    head = output_head(model)
    ref_head = frozen_head(head) if ref_head is None else ref_head
    softcap = softcap_of(model)
    kw = packed_model_inputs(batch)
    h = backbone(model)(**kw, use_cache=False).last_hidden_state[0]
    h = h.to(head.weight.device)
    head, ref_head = gathered(head), gathered(ref_head)
    lens = [int(n) for n in batch["packed_seq_lens"]]
    flags = [bool(x) for x in is_benign.tolist()]
    if len(flags) != len(lens):
        raise ValueError(f"{len(flags)} is_benign flags for {len(lens)} packed examples")
    tok_benign = torch.repeat_interleave(torch.tensor(flags, device=h.device),
                                         torch.tensor(lens, device=h.device))
    y = batch["labels"][0, 1:].to(h.device)
    learned = y != IGNORE_INDEX                  # position t predicts t+1, always inside one example
    target_benign = tok_benign[1:]
    harm = learned & ~target_benign
    ce_tok = cross_entropy_per_token(h[:-1][harm], y[harm], head, chunk_size, softcap)
    kl_tok = h.new_zeros(0, dtype=torch.float32)
    if any(flags):
        ids = kw["input_ids"]
        keep = tok_benign.to(ids.device)
        sub = [n for n, f in zip(lens, flags) if f]
        cu = torch.tensor([0, *torch.tensor(sub).cumsum(0).tolist()], dtype=torch.int32, device=ids.device)
        h_ref = ref_hidden(ids[:, keep], position_ids=kw["position_ids"][:, keep], cu_seq_lens_q=cu,
                           cu_seq_lens_k=cu, max_length_q=max(sub), max_length_k=max(sub),
                           packed_seq_lens=tuple(sub))[0].to(h.device)
        rows = (learned & target_benign).nonzero().squeeze(1)
        in_sub = torch.cumsum(tok_benign.long(), 0) - 1          # row position -> benign sub-row position
        kl_tok = forward_kl_per_token(h[rows], h_ref[in_sub[rows]], head, ref_head, chunk_size, softcap)
    tie = h.sum() * 0.0
    return {"ce_sum": ce_tok.sum() + tie, "kl_sum": kl_tok.sum() + tie,
            "ce_tokens": torch.tensor(ce_tok.numel(), device=h.device),
            "kl_tokens": torch.tensor(kl_tok.numel(), device=h.device)}


class _Packing:
    """What both packed trainers share: the attention switch, token counting, packing statistics."""

    def _init_packing(self) -> None:
        register_varlen_attention()
        self._attn_saved: dict[int, tuple] = {}
        self.packing_stats = torch.zeros(3, dtype=torch.long)   # rows, real tokens, tokens if right-padded
        self._use_varlen()
        lm = self._causal_lms()[0]
        cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        # on CUDA: torch's varlen FlashAttention if it runs and agrees with the exact per-example loop
        self.varlen_backend = select_varlen_backend(self.args.device, heads,
                                                    getattr(cfg, "num_key_value_heads", None) or heads, head_dim,
                                                    next(lm.parameters()).dtype)

    def _causal_lms(self):
        out = [causal_lm(self.accelerator.unwrap_model(self.model))]
        if getattr(self, "ref_model", None) is not None:
            out.append(causal_lm(self.accelerator.unwrap_model(self.ref_model)))
        return out

    def _use_varlen(self) -> None:
        for lm in self._causal_lms():
            cfg = lm.config
            if cfg._attn_implementation != VARLEN_ATTENTION:
                self._attn_saved.setdefault(id(cfg), (cfg, cfg._attn_implementation))
                cfg._attn_implementation = VARLEN_ATTENTION

    def restore_attention(self) -> None:
        """Back to the attention the model was loaded with (generation after training needs masks)."""
        for cfg, impl in self._attn_saved.values():
            cfg._attn_implementation = impl
        self._attn_saved.clear()

    def train(self, *args, **kwargs):
        self._use_varlen()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.restore_attention()

    def _track_num_input_tokens(self, inputs):
        """Real tokens of the packed row (there is no padding, and no attention mask to count it by)."""
        lens = inputs.get("packed_seq_lens")
        if lens is None:
            return super()._track_num_input_tokens(inputs)
        real = sum(int(n) for n in lens)
        local = torch.tensor([1, real, len(lens) * max(lens, default=0)], dtype=torch.long, device=self.args.device)
        total = self.accelerator.gather(local).view(-1, 3).sum(0).cpu()
        self.packing_stats += total
        if self.args.include_num_input_tokens_seen != "no":
            self.state.num_input_tokens_seen += int(total[1])

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """``num_items_in_batch`` is always counted (the loss is normalised over the whole step)."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items is None and batch_samples:
            num_items = sum((b["labels"][..., 1:] != IGNORE_INDEX).sum() for b in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                num_items = self.accelerator.gather(num_items).sum()
        return batch_samples, num_items


class PackedSFTTrainer(MicroBatchTraining, _Packing, SFTTrainer):
    """SFTTrainer on packed rows with the varlen attention and the chunked cross-entropy.

    The dataset needs ``input_ids`` and ``labels`` (-100 where nothing is learned).
    ``ce_chunk_size``: response tokens per chunk of the fused LM head + cross-entropy; None = as many as
    fit a fixed memory budget for the vocabulary (:func:`thinksafe.trainers.loss.auto_chunk_rows`).
    ``micro_batch_tokens``: cut each collated batch into micro-batches of at most this many tokens
    (:mod:`thinksafe.trainers.microbatch`); None = one forward pass per collated batch."""

    def __init__(self, *args, ce_chunk_size: int | None = None, micro_batch_tokens: int | None = None,
                 lm_head_loss: str = "auto", **kwargs):
        kwargs.setdefault("data_collator", PackedCollator())
        super().__init__(*args, **kwargs)
        self.ce_chunk_size = ce_chunk_size
        self.loss_is_scaled_for_ga = True       # divided by the step's response tokens below
        self._init_packing()
        self._init_micro_batches(micro_batch_tokens)
        from thinksafe.trainers.kernels import select_lm_head_loss
        lm = self._causal_lms()[0]
        head = lm.get_output_embeddings()
        self.lm_head_backend = select_lm_head_loss(lm_head_loss, self.args.device, head.weight.shape[1],
                                                   dtype=next(lm.parameters()).dtype)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        self._use_varlen()
        unwrapped = self.accelerator.unwrap_model(model)
        loss = _redirect(model, unwrapped, packed_lm_loss, unwrapped, inputs, chunk_size=self.ce_chunk_size,
                         num_items=num_items_in_batch, kernel=self.lm_head_backend["backend"])
        # as Trainer / TRL: num_items_in_batch counts every process's tokens and DDP averages gradients
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if mode == "train":
            n = torch.tensor(inputs["input_ids"].size(1), device=inputs["input_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(n).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, None) if return_outputs else loss


class PackedKLTrainer(MicroBatchTraining, _Packing, KLTrainer):
    """ThinkSafe+KL (:class:`~thinksafe.trainers.kl.KLTrainer`) on packed rows: one ``is_benign``
    flag per packed example; counts and means over the whole optimiser step, as KLTrainer.
    ``micro_batch_tokens`` as :class:`PackedSFTTrainer`."""

    def __init__(self, *args, micro_batch_tokens: int | None = None, **kwargs):
        kwargs.setdefault("data_collator", PackedCollator())    # KLTrainer keeps is_benign around it
        super().__init__(*args, **kwargs)
        self._init_packing()
        self._init_micro_batches(micro_batch_tokens)

    def _row_counts(self, batch, device=None) -> torch.Tensor:
        device = device if device is not None else batch["labels"].device
        return packed_row_counts(batch["labels"].to(device), batch["is_benign"].to(device),
                                 batch["packed_seq_lens"])

    def _loss_parts(self, unwrapped, inputs, is_benign):
        ref_hidden, ref_head = self._references(unwrapped)
        return packed_loss_parts(unwrapped, inputs, is_benign, ref_hidden, ref_head, self.kl_chunk_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._use_varlen()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

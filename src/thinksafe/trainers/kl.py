"""ThinkSafe+KL (paper §5.3; the official ``trainers/kl_trainer.py``).

Benign rows (``label != "harmful"``) learn the token-wise forward KL(reference || student) over the
full vocabulary on their response tokens INSTEAD of cross-entropy; harmful rows keep cross-entropy:

    loss = (CE · n_ce + KL · n_kl) / n

CE is the mean over the harmful rows' response tokens, KL the mean over the benign rows' response
tokens of sum_v p_ref(v) (log p_ref(v) - log p_student(v)), and n_ce / n_kl / n count ROWS. There is
no coefficient. Here the counts and means are taken over the whole optimiser step (every
micro-batch of every process), so the loss does not depend on how a step is split across
gradient-accumulation steps and GPUs; with one micro-batch per step it is exactly the formula above.

The reference is the same model with its LoRA adapter disabled (no grad), or, for full fine-tuning,
a frozen copy of the base. Logits are never materialised for the whole sequence: the hidden states
of the positions that count are projected through the LM head ``chunk_size`` tokens at a time
(student and reference), each chunk under activation checkpointing, so memory grows with
chunk_size × vocabulary, not sequence × vocabulary. ``chunk_size=None`` (the default) takes as many
rows as keep a chunk's vocabulary-sized buffers within a fixed budget
(:func:`thinksafe.trainers.loss.auto_chunk_rows`): large chunks for a small vocabulary, small ones for
Qwen3's 151,936 tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from trl import SFTTrainer

from thinksafe.trainers.loss import auto_chunk_rows, resolve_chunk_size

# order of the counters used everywhere below
COUNTS = ("ce_tokens", "kl_tokens", "ce_rows", "kl_rows")


# --------------------------------------------------------------------------- model plumbing
def causal_lm(model):
    """The transformers causal LM inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The decoder without its LM head (e.g. Qwen3Model); LoRA layers inside it stay active."""
    return causal_lm(model).base_model


def output_head(model):
    return causal_lm(model).get_output_embeddings()


def frozen_head(head):
    """The head without any adapter on it (PEFT wraps a targeted lm_head; its base_layer is the original)."""
    return getattr(head, "base_layer", head)


def gathered(head):
    """The head as a callable on plain tensors. Under FSDP2 its weight is a sharded DTensor that may be
    resharded again when a checkpointed chunk is recomputed in the backward pass: gather it once here
    (its backward reduce-scatters the gradient), as TRL's chunked distillation loss does."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:                             # torch without torch.distributed
        return head
    if not isinstance(head.weight, DTensor):
        if (isinstance(head, torch.nn.Linear) and not hasattr(head.weight, "ds_id")
                and torch.distributed.is_available() and torch.distributed.is_initialized()):
            # Distributed (FSDP2): a Linear head's weight read now, not when a checkpointed chunk is recomputed,
            # as FSDP2 can have swapped the module's parameter back to its sharded DTensor by then (seen on one
            # H200: "aten.mm got mixed torch.Tensor and DTensor"). ZeRO-3 weights are gathered by the call.
            weight, bias = head.weight, head.bias
            return lambda h: F.linear(h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype))
        return head
    weight = head.weight.full_tensor()
    bias = head.bias.full_tensor() if isinstance(head.bias, DTensor) else head.bias
    return lambda h: F.linear(h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype))


def softcap_of(model) -> float | None:
    cfg = causal_lm(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(cfg, "final_logit_softcapping", None)


# --------------------------------------------------------------------------- chunked per-token terms
def _logits(head, h, softcap):
    logits = head(h).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def _kl_chunk(h_s, h_r, head_s, head_r, softcap):
    logp_s = F.log_softmax(_logits(head_s, h_s, softcap), dim=-1)
    with torch.no_grad():
        logp_r = F.log_softmax(_logits(head_r, h_r, softcap), dim=-1)
    return (logp_r.exp() * (logp_r - logp_s)).sum(-1)


def _ce_chunk(h, y, head, softcap):
    return F.cross_entropy(_logits(head, h, softcap), y, reduction="none")


# fp32 vocabulary-sized buffers one chunk holds at its peak (logits, log-softmax, the backward's
# gradient; the KL chunk holds both models' logits and log-softmaxes and their products)
CE_BUFFERS, KL_BUFFERS = 3, 6


def head_vocab(head, h: torch.Tensor) -> int:
    """Output columns of an LM head (module or plain callable): its weight's rows, else one row's logits."""
    for obj in (head, getattr(head, "base_layer", None)):
        n = getattr(obj, "out_features", None)
        if isinstance(n, int) and n > 0:
            return n
    with torch.no_grad():
        return int(head(h[:1]).shape[-1])


def _rows(chunk_size: int | None, head, h: torch.Tensor, buffers: int) -> int:
    """``chunk_size`` as given; None = rows whose ``buffers`` fp32 logit buffers fit the chunk budget."""
    if chunk_size is not None:
        return resolve_chunk_size(chunk_size, 1)
    if h.shape[0] == 0:
        return 1
    return auto_chunk_rows(head_vocab(head, h), h.dtype, buffers=buffers)


def _chunked(fn, chunk_size: int, tensors: list[torch.Tensor], *static) -> torch.Tensor:
    """fn over row chunks of ``tensors`` (same first dimension); with grad, each chunk is checkpointed
    so only its inputs are kept and its logits are rebuilt in the backward pass."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = tensors[0].shape[0]
    out = []
    for s in range(0, n, chunk_size):
        part = [t[s:s + chunk_size] for t in tensors]
        if torch.is_grad_enabled():
            out.append(checkpoint(fn, *part, *static, use_reentrant=False))
        else:
            out.append(fn(*part, *static))
    return torch.cat(out) if out else tensors[0].new_zeros(0, dtype=torch.float32)


def forward_kl_per_token(h_student: torch.Tensor, h_ref: torch.Tensor, head_student, head_ref,
                         chunk_size: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """KL(ref || student) summed over the vocabulary, one value per row of the [N, H] hidden states.
    ``chunk_size``: rows per chunk; None = by memory (the vocabulary's buffers within the chunk budget)."""
    rows = _rows(chunk_size, head_student, h_student, KL_BUFFERS)
    return _chunked(_kl_chunk, rows, [h_student, h_ref.detach()], head_student, head_ref, softcap)


def cross_entropy_per_token(h: torch.Tensor, labels: torch.Tensor, head, chunk_size: int | None = None,
                            softcap: float | None = None) -> torch.Tensor:
    """-log p(label) for each row of the [N, H] hidden states (``chunk_size`` as above)."""
    return _chunked(_ce_chunk, _rows(chunk_size, head, h, CE_BUFFERS), [h, labels], head, softcap)


# --------------------------------------------------------------------------- the loss
def row_counts(labels: torch.Tensor, is_benign: torch.Tensor) -> torch.Tensor:
    """[ce_tokens, kl_tokens, ce_rows, kl_rows] of a padded batch (labels -100 where not learned)."""
    tokens = (labels[:, 1:] != -100).sum(1)
    benign = is_benign.bool().to(tokens.device)
    return torch.stack([tokens[~benign].sum(), tokens[benign].sum(), (~benign).sum(), benign.sum()]).long()


def combine(ce_sum: torch.Tensor, kl_sum: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(CE·n_ce + KL·n_kl)/n with CE = ce_sum/ce_tokens and KL = kl_sum/kl_tokens."""
    t_ce, t_kl, n_ce, n_kl = counts.to(device=ce_sum.device, dtype=torch.float32).unbind()
    n = (n_ce + n_kl).clamp(min=1)
    return (n_ce / n) * ce_sum / t_ce.clamp(min=1) + (n_kl / n) * kl_sum / t_kl.clamp(min=1)


def peft_reference(model) -> Callable:
    """Reference hidden states: the same model with its adapter disabled, no grad. Extra keyword
    arguments (a packed row's position_ids, cu_seq_lens_q/k, ...) go to the decoder as they are."""
    def hidden(input_ids, attention_mask=None, **kwargs):
        with torch.no_grad(), model.disable_adapter():
            return backbone(model)(input_ids=input_ids, attention_mask=attention_mask,
                                   use_cache=False, **kwargs).last_hidden_state
    return hidden


def model_reference(ref_model) -> Callable:
    def hidden(input_ids, attention_mask=None, **kwargs):
        with torch.no_grad():
            return backbone(ref_model)(input_ids=input_ids, attention_mask=attention_mask,
                                       use_cache=False, **kwargs).last_hidden_state
    return hidden


def loss_parts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
               is_benign: torch.Tensor, ref_hidden: Callable | None = None, ref_head=None,
               chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Sums for one micro-batch: CE over the harmful rows' response tokens, KL over the benign rows'.

    ``model`` is the unwrapped student (PeftModel or causal LM). ``ref_hidden(input_ids, mask)`` gives
    the reference's last hidden states (default: the student with its adapter disabled) and
    ``ref_head`` its LM head (default: the student's head without adapter)."""
    if ref_hidden is None:
        ref_hidden = peft_reference(model)
    head = output_head(model)
    ref_head = frozen_head(head) if ref_head is None else ref_head
    softcap = softcap_of(model)
    h = backbone(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    h = h.to(head.weight.device)
    head, ref_head = gathered(head), gathered(ref_head)
    y = labels[:, 1:].to(h.device)
    learned = y != -100
    benign = is_benign.bool().to(h.device)
    harm = learned & ~benign[:, None]
    ce_tok = cross_entropy_per_token(h[:, :-1][harm], y[harm], head, chunk_size, softcap)
    kl_tok = h.new_zeros(0, dtype=torch.float32)
    if benign.any():
        sel = benign.to(input_ids.device)
        h_ref = ref_hidden(input_ids[sel], None if attention_mask is None else attention_mask[sel])
        keep = learned[benign]
        kl_tok = forward_kl_per_token(h[benign][:, :-1][keep], h_ref.to(h.device)[:, :-1][keep],
                                      head, ref_head, chunk_size, softcap)
    tie = h.sum() * 0.0     # a micro-batch with no token of one kind still gives a connected zero
    return {"ce_sum": ce_tok.sum() + tie, "kl_sum": kl_tok.sum() + tie,
            "ce_tokens": torch.tensor(ce_tok.numel(), device=h.device),
            "kl_tokens": torch.tensor(kl_tok.numel(), device=h.device)}


def kl_sft_loss(model, input_ids, attention_mask, labels, is_benign, chunk_size: int | None = None,
                ref_hidden: Callable | None = None, ref_head=None) -> tuple[torch.Tensor, dict]:
    """The ThinkSafe+KL loss of one batch on its own (no distributed counts): (loss, parts)."""
    parts = loss_parts(model, input_ids, attention_mask, labels, is_benign, ref_hidden, ref_head, chunk_size)
    return combine(parts["ce_sum"], parts["kl_sum"], row_counts(labels, is_benign)), parts


# --------------------------------------------------------------------------- TRL integration
def _redirect(wrapper, inner, fn, *args, **kwargs):
    """Run ``fn`` as the forward of ``inner`` called THROUGH ``wrapper`` (DDP / FSDP / DeepSpeed), so
    the wrapper's forward hooks fire (DDP gradient sync, parameter gathering) around our own loss.
    Without a wrapper, ``inner`` itself is called, so hooks registered on it (FSDP2's, which shards
    the module in place) fire too."""
    own = "forward" in inner.__dict__          # e.g. accelerate's mixed-precision wrapper
    original = inner.forward

    def restore():
        if own:
            inner.forward = original
        else:
            inner.__dict__.pop("forward", None)

    def forward(*a, **k):
        restore()
        return fn(*a, **k)

    inner.forward = forward
    try:
        return wrapper(*args, **kwargs)
    finally:
        restore()


class BenignFlagCollator:
    """Wraps TRL's collator: pads as TRL does and keeps one ``is_benign`` flag per row."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        missing = [i for i, e in enumerate(examples) if "is_benign" not in e]
        if missing:
            raise KeyError("train.objective=kl: rows reached the collator without 'is_benign' "
                           "(was the column removed from the dataset?)")
        flags = torch.tensor([int(e["is_benign"]) for e in examples], dtype=torch.long)
        batch = self.inner([{k: v for k, v in e.items() if k != "is_benign"} for e in examples])
        batch["is_benign"] = flags
        return batch


class KLTrainer(SFTTrainer):
    """SFTTrainer whose loss is ThinkSafe+KL. The dataset needs input_ids, labels and is_benign.

    ``ref_model``: a frozen reference for full fine-tuning; None = the PEFT model with its adapter
    disabled. Logs ``ce`` and ``kl`` (token means over the logging period) next to ``loss``."""

    def __init__(self, *args, ref_model=None, kl_chunk_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_chunk_size = kl_chunk_size
        self.data_collator = BenignFlagCollator(self.data_collator)
        self.loss_is_scaled_for_ga = True      # normalised over the whole optimiser step below
        self._step_counts: torch.Tensor | None = None
        self._kl_sums = {"train": torch.zeros(4, dtype=torch.float64), "eval": torch.zeros(4, dtype=torch.float64)}
        self.ref_model = None
        if ref_model is not None:
            ref_model.eval()
            ref_model.requires_grad_(False)
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed
                ref_model = prepare_deepspeed(ref_model, self.accelerator)
            elif self.is_fsdp_enabled:
                from trl.models.utils import prepare_fsdp
                ref_model = prepare_fsdp(ref_model, self.accelerator)
            else:
                ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            self.ref_model = ref_model

    def _set_signature_columns_if_needed(self):
        # remove_unused_columns would drop is_benign: it is not an argument of the model's forward
        super()._set_signature_columns_if_needed()
        if "is_benign" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "is_benign"]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count tokens and rows of each kind over the whole optimiser step, on every process."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(4, dtype=torch.long, device=device)
        for b in batch_samples:
            counts += self._row_counts(b, device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._step_counts = counts
        return batch_samples, num_items

    def _row_counts(self, batch, device=None) -> torch.Tensor:
        """[ce_tokens, kl_tokens, ce_rows, kl_rows] of one collated micro-batch."""
        device = device if device is not None else batch["labels"].device
        return row_counts(batch["labels"].to(device), batch["is_benign"].to(device))

    def _references(self, unwrapped):
        if self.ref_model is None:
            return peft_reference(unwrapped), None
        ref = self.accelerator.unwrap_model(self.ref_model)

        def hidden(input_ids, attention_mask=None, **kwargs):
            return _redirect(self.ref_model, ref, model_reference(ref), input_ids, attention_mask, **kwargs)
        return hidden, output_head(ref)

    def _loss_parts(self, unwrapped, inputs, is_benign):
        ref_hidden, ref_head = self._references(unwrapped)
        return loss_parts(unwrapped, inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"],
                          is_benign, ref_hidden, ref_head, self.kl_chunk_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        is_benign = inputs.pop("is_benign")
        unwrapped = self.accelerator.unwrap_model(model)
        parts = _redirect(model, unwrapped, self._loss_parts, unwrapped, inputs, is_benign)
        if mode == "train" and self._step_counts is not None:
            # global counts of the step; DDP/FSDP/DeepSpeed average gradients over processes
            loss = combine(parts["ce_sum"], parts["kl_sum"], self._step_counts) * self.accelerator.num_processes
        else:
            loss = combine(parts["ce_sum"], parts["kl_sum"], self._row_counts({**inputs, "is_benign": is_benign}))
        stats = torch.stack([parts["ce_sum"].detach().double(), parts["kl_sum"].detach().double(),
                             parts["ce_tokens"].double(), parts["kl_tokens"].double()])
        if self.accelerator.num_processes > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        self._kl_sums[mode] += stats.cpu()
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "" if mode == "train" else "eval_"
        ce_sum, kl_sum, ce_tokens, kl_tokens = self._kl_sums[mode].tolist()
        if ce_tokens > 0:
            logs[f"{prefix}ce"] = ce_sum / ce_tokens
        if kl_tokens > 0:
            logs[f"{prefix}kl"] = kl_sum / kl_tokens
        self._kl_sums[mode].zero_()
        super().log(logs, start_time)

"""Chunked linear + cross-entropy: the LM loss without full-vocabulary logits for the whole batch.

``logits = hidden @ weight.T`` for a 16k-token batch and a 151,936-token vocabulary is 5 GB in bf16 and 10 GB
once upcast to fp32 for the loss, and autograd keeps both plus the softmax. :func:`chunked_cross_entropy`
instead walks over ``chunk_size`` rows of the final hidden states, computes that chunk's logits (upcast to
fp32, as transformers' loss does), its loss, and — in the same pass — the gradient w.r.t. the chunk's hidden
states (``(softmax - onehot) / denom @ weight``). Only that ``(N, hidden)`` gradient is kept for backward,
never a logits tensor. With ``precompute_grad=False`` nothing is kept and backward recomputes each chunk's
logits instead (one extra ``hidden @ weight.T`` per token; lower memory when the loss is built but backward
may not run).

Each chunk's fp32 logits are the only vocabulary-sized buffer: the log-sum-exp and the gradient are taken
in place in it. ``chunk_size=None`` (the default) sizes the chunks by memory rather than rows:
:func:`auto_chunk_rows` gives the rows whose logits fit :data:`CHUNK_BUDGET_BYTES` (64k rows for a 1k
vocabulary, 441 for Qwen3's 151,936), so a large vocabulary does not multiply the peak.

Only positions whose (shifted) label is not ``ignore_index`` get logits at all: prompt tokens (labels -100)
cost no lm_head work. The loss equals ``F.cross_entropy(hidden @ weight.T, labels)`` over those positions
(``reduction="mean"``), or its sum divided by ``num_items`` (gradient accumulation, transformers'
``num_items_in_batch`` convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


# the vocabulary-sized working memory one chunk may take (its fp32 logits, plus the matmul's own output
# when the weights are in half precision); see auto_chunk_rows
CHUNK_BUDGET_BYTES = 256 * 2**20
MAX_CHUNK_ROWS = 65536


def auto_chunk_rows(vocab: int, dtype: torch.dtype = torch.float32, budget: int = CHUNK_BUDGET_BYTES,
                    buffers: int = 1) -> int:
    """Rows per chunk so that ``buffers`` fp32 logit buffers of ``vocab`` columns (+ the half-precision
    matmul output) stay within ``budget`` bytes; between 1 and :data:`MAX_CHUNK_ROWS`."""
    per_row = int(vocab) * (4 * buffers + (0 if dtype == torch.float32 else torch.finfo(dtype).bits // 8))
    return max(1, min(MAX_CHUNK_ROWS, budget // max(per_row, 1)))


def resolve_chunk_size(chunk_size: int | None, vocab: int, dtype: torch.dtype = torch.float32,
                       buffers: int = 1) -> int:
    """An explicit ``chunk_size`` as it is; None = :func:`auto_chunk_rows`."""
    if chunk_size is None:
        return auto_chunk_rows(vocab, dtype, buffers=buffers)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _chunk_loss_grad(h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor, denom: float, want_grad: bool):
    """Summed cross-entropy of one chunk and, with ``want_grad``, d(sum / denom) / d logits, computed in
    the chunk's one fp32 logits buffer: logits -> exp(logits - row max) -> (softmax - onehot) / denom."""
    logits = _upcast(h @ weight.t())
    picked = logits.gather(1, t.unsqueeze(1)).squeeze(1)
    m = logits.amax(dim=1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    sums = logits.sub_(m).exp_().sum(1)
    loss = (sums.log() + m.squeeze(1) - picked).sum()
    if not want_grad:
        return loss, None
    logits.mul_((1.0 / (sums * denom)).unsqueeze(1))
    logits[torch.arange(t.numel(), device=logits.device), t] -= 1.0 / denom
    return loss, logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, denom, precompute_grad):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = hidden.shape[0]
        total = torch.zeros((), dtype=_upcast(hidden[:0]).dtype, device=hidden.device)
        pre = precompute_grad and (need_h or need_w)
        grad_h = torch.empty_like(hidden) if pre and need_h else None
        grad_w = _upcast(weight[:0]).new_zeros(weight.shape) if pre and need_w else None
        for s in range(0, n, chunk_size):
            h, t = hidden[s:s + chunk_size], targets[s:s + chunk_size]
            loss, g = _chunk_loss_grad(h, weight, t, denom, pre)
            total += loss
            if pre:
                g = g.to(hidden.dtype)
                if grad_h is not None:
                    torch.mm(g, weight, out=grad_h[s:s + chunk_size])
                if grad_w is not None:
                    grad_w += _upcast(g.t() @ h)
            del g                       # before the next chunk's logits: one buffer at a time
        ctx.chunk_size, ctx.denom, ctx.pre = chunk_size, denom, pre
        ctx.need, ctx.weight_dtype = (need_h, need_w), weight.dtype
        if pre:
            ctx.save_for_backward(grad_h, grad_w)
        else:
            ctx.save_for_backward(hidden, weight, targets)
        return total / denom

    @staticmethod
    def backward(ctx, grad_out):
        need_h, need_w = ctx.need
        if ctx.pre:
            grad_h, grad_w = ctx.saved_tensors
            gh = grad_h * grad_out.to(grad_h.dtype) if need_h else None
            gw = (grad_w * grad_out).to(ctx.weight_dtype) if need_w else None
            return gh, gw, None, None, None, None
        hidden, weight, targets = ctx.saved_tensors
        gh = torch.empty_like(hidden) if need_h else None
        gw = _upcast(weight[:0]).new_zeros(weight.shape) if need_w else None
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            h, t = hidden[s:s + ctx.chunk_size], targets[s:s + ctx.chunk_size]
            g = _chunk_loss_grad(h, weight, t, ctx.denom, True)[1].mul_(grad_out).to(hidden.dtype)
            if gh is not None:
                torch.mm(g, weight, out=gh[s:s + ctx.chunk_size])
            if gw is not None:
                gw += _upcast(g.t() @ h)
            del g
        return gh, (gw.to(weight.dtype) if gw is not None else None), None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          chunk_size: int | None = None, ignore_index: int = IGNORE_INDEX, shift: bool = True,
                          num_items: int | float | torch.Tensor | None = None, reduction: str = "mean",
                          precompute_grad: bool = True) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``labels`` without materialising all logits.

    Args:
        hidden: final hidden states ``(..., T, H)`` (after the final norm), e.g. ``model.model(...).last_hidden_state``.
        weight: the lm_head weight ``(V, H)`` (tied to the embeddings for Qwen3-0.6B); no bias, no soft-capping.
        labels: ``(..., T)`` aligned with ``hidden``'s positions; ``ignore_index`` marks positions without loss.
        chunk_size: rows per chunk; None = by memory (:func:`auto_chunk_rows` of the vocabulary).
        shift: causal-LM convention (transformers'): position ``t`` predicts ``labels[..., t + 1]``.
        num_items: divide the summed loss by this (e.g. label tokens across accumulated micro-batches).
            Default: the number of counted positions (``reduction="mean"``), or 1 (``reduction="sum"``).
        precompute_grad: compute d loss / d hidden during forward (no recompute, stores ``(N, H)``);
            False: store nothing and recompute chunk logits in backward.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(reduction)
    if shift:
        labels = F.pad(labels[..., 1:], (0, 1), value=ignore_index)
    h = hidden.reshape(-1, hidden.shape[-1])
    t = labels.reshape(-1).to(h.device)
    keep = (t != ignore_index).nonzero().squeeze(1)
    n = keep.numel()
    if num_items is not None:
        denom = float(num_items.item() if isinstance(num_items, torch.Tensor) else num_items)
    else:
        denom = float(n) if reduction == "mean" else 1.0
    if n == 0:
        return hidden.sum() * 0.0
    h_sel = h.index_select(0, keep)
    t_sel = t.index_select(0, keep)
    rows = resolve_chunk_size(chunk_size, weight.shape[0], h_sel.dtype)
    loss = _LinearCrossEntropy.apply(h_sel, weight, t_sel, rows, max(denom, 1e-12), bool(precompute_grad))
    return loss


def causal_lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder, lm_head) of a transformers causal LM, unwrapping a PEFT model if needed."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.model if isinstance(getattr(inner, "model", None), torch.nn.Module) else inner.get_decoder()
    head = inner.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("chunked_cross_entropy assumes an lm_head without bias")
    return decoder, head


def chunked_lm_loss(model: torch.nn.Module, batch: dict, *, chunk_size: int | None = None,
                    num_items: int | float | torch.Tensor | None = None, precompute_grad: bool = True,
                    **model_inputs) -> torch.Tensor:
    """Run the decoder on ``model_inputs`` and return :func:`chunked_cross_entropy` against ``batch["labels"]``."""
    decoder, head = causal_lm_parts(model)
    hidden = decoder(**model_inputs).last_hidden_state
    return chunked_cross_entropy(hidden, head.weight, batch["labels"], chunk_size=chunk_size, num_items=num_items,
                                 precompute_grad=precompute_grad)

"""Length-grouped batches with a token budget, padding-free packing, and an attention that respects packing.

Three reusable parts for the train stage:

* :func:`plan_batches` / :class:`TokenBudgetBatchSampler` — group examples so a batch holds at most
  ``token_budget`` tokens. ``padded=False`` (for packing) bins examples by best-fit decreasing on the sum of
  lengths; ``padded=True`` (for padded batches) groups similar lengths so ``max_len * batch_size`` fits.
* :class:`PackedCollator` — concatenates a batch into one row with no padding: ``input_ids``, ``labels``
  (the first label of every example is ignored so nothing is predicted across a boundary),
  ``position_ids`` restarting at 0 per example, ``cu_seq_lens_q/k`` (int32, the FlashAttention varlen
  convention transformers uses), ``max_length_q/k`` and ``packed_seq_lens`` (a tuple of Python ints).
* :func:`register_varlen_attention` — registers a transformers attention implementation
  (:data:`VARLEN_ATTENTION`) that attends only within each packed example. It runs PyTorch's
  ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention varlen, CUDA) when available, else a loop of
  causal ``scaled_dot_product_attention`` calls, one per example (any device; exact).

Why a custom implementation: transformers' ``"sdpa"`` respects packed ``position_ids`` by building a dense
block-diagonal ``T x T`` mask, which disables SDPA's flash kernels and computes every masked block
(for a 16k-token row that is ~10x the attention work of the real examples). The varlen path does only the
per-example causal work.

Use::

    register_varlen_attention()
    model.config._attn_implementation = VARLEN_ATTENTION
    batch = PackedCollator()(examples)
    hidden = causal_lm.model(**packed_model_inputs(batch)).last_hidden_state
"""

from __future__ import annotations

import bisect
import inspect
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
VARLEN_ATTENTION = "thinksafe_varlen"


class PackedAttentionError(RuntimeError):
    """The packed (varlen) attention was called without the per-example lengths of the packed row."""


# --------------------------------------------------------------------------------------------------------------
# Batch planning
# --------------------------------------------------------------------------------------------------------------

def plan_batches(lengths: Sequence[int], token_budget: int, *, padded: bool = False, seed: int = 0,
                 shuffle: bool = True, max_batch_size: int | None = None) -> list[list[int]]:
    """Split example indices into batches of at most ``token_budget`` tokens.

    ``padded=False``: cost of a batch = sum of lengths (packing). Best-fit decreasing bin packing, which
    fills rows to ~99 % on long-tailed length distributions.
    ``padded=True``: cost = longest length x batch size (a padded batch). Examples are sorted by length and
    cut greedily, so each batch holds similar lengths.

    An example longer than ``token_budget`` raises ``ValueError`` (truncate first). Batch order is shuffled
    with ``seed`` when ``shuffle``; the composition is deterministic given the lengths (ties broken by seed).
    """
    if token_budget <= 0:
        raise ValueError("token_budget must be positive")
    too_long = [i for i, n in enumerate(lengths) if n > token_budget]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than token_budget={token_budget} "
                         f"(e.g. index {too_long[0]}, {lengths[too_long[0]]} tokens); truncate them first")
    rng = random.Random(seed)
    tiebreak = list(range(len(lengths)))
    rng.shuffle(tiebreak)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tiebreak[i]))
    cap = max_batch_size or math.inf
    batches: list[list[int]] = []
    if padded:
        cur: list[int] = []
        for i in order:                       # descending, so cur[0] is the longest of the batch
            if cur and (lengths[cur[0]] * (len(cur) + 1) > token_budget or len(cur) >= cap):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    else:
        # best fit: the open bin with the least room that still fits. `room` is kept sorted, with bin ids.
        room: list[tuple[int, int]] = []
        for i in order:
            n = max(int(lengths[i]), 0)
            k = bisect.bisect_left(room, (n, -1))
            if k < len(room):
                r, b = room.pop(k)
                batches[b].append(i)
                r -= n
            else:
                batches.append([i])
                b, r = len(batches) - 1, token_budget - n
            if r > 0 and len(batches[b]) < cap:     # a full bin (by tokens or count) is closed
                bisect.insort(room, (r, b))
    if shuffle:
        rng.shuffle(batches)
    return batches


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """A batch sampler for ``DataLoader(batch_sampler=...)`` built on :func:`plan_batches`.

    ``lengths[i]`` is the token count of example ``i``. Call :meth:`set_epoch` to reshuffle per epoch.
    """

    def __init__(self, lengths: Sequence[int], token_budget: int, *, padded: bool = False, seed: int = 0,
                 shuffle: bool = True, max_batch_size: int | None = None):
        self.lengths = [int(n) for n in lengths]
        self.token_budget = token_budget
        self.padded = padded
        self.seed = seed
        self.shuffle = shuffle
        self.max_batch_size = max_batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        return plan_batches(self.lengths, self.token_budget, padded=self.padded, seed=self.seed + self.epoch,
                            shuffle=self.shuffle, max_batch_size=self.max_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


# --------------------------------------------------------------------------------------------------------------
# Collators
# --------------------------------------------------------------------------------------------------------------

def _as_list(x: Any) -> list[int]:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return list(x)


def _ids_and_labels(ex: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    ids = _as_list(ex["input_ids"])
    labels = _as_list(ex["labels"]) if ex.get("labels") is not None else list(ids)
    if len(labels) != len(ids):
        raise ValueError("input_ids and labels differ in length")
    return ids, labels


@dataclass
class PackedCollator:
    """Padding-free collation: a list of ``{"input_ids", "labels"}`` examples -> one packed row.

    Returns ``input_ids``/``labels``/``position_ids`` of shape ``(1, T)``, ``cu_seq_lens_q``/``_k``
    (int32, ``(n+1,)``), ``max_length_q``/``_k``, ``packed_seq_lens`` (tuple of ints), plus bookkeeping:
    ``num_tokens`` (real tokens) and ``num_loss_tokens`` (labels that count after the causal shift).

    ``pad_to``: append padding pseudo-examples (of <= 1024 tokens each) so T == pad_to (static shapes for
    torch.compile / CUDA graphs). They are their own segments, so they never attend to or from real tokens, and
    their labels are ignored.
    """

    pad_token_id: int = 0
    ignore_index: int = IGNORE_INDEX
    pad_to: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        lens: list[int] = []
        n_loss = 0
        for ex in examples:
            e_ids, e_lab = _ids_and_labels(ex)
            if not e_ids:
                continue
            e_lab = [self.ignore_index] + e_lab[1:]       # never predict an example's first token from the previous one
            n_loss += sum(1 for t in e_lab if t != self.ignore_index)
            ids += e_ids
            labels += e_lab
            pos += range(len(e_ids))
            lens.append(len(e_ids))
        n_real = len(ids)
        if self.pad_to is not None:
            if n_real > self.pad_to:
                raise ValueError(f"packed batch has {n_real} tokens > pad_to={self.pad_to}")
            pad = self.pad_to - n_real
            while pad:                  # segments of <= 1024 tokens: padding costs little attention work
                n = min(pad, 1024)
                ids += [self.pad_token_id] * n
                labels += [self.ignore_index] * n
                pos += range(n)
                lens.append(n)
                pad -= n
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32) if lens else \
            torch.zeros(1, dtype=torch.int32)
        max_len = max(lens) if lens else 0
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": max_len, "max_length_k": max_len,
            "packed_seq_lens": tuple(lens),
            "num_tokens": n_real, "num_loss_tokens": n_loss,
        }


@dataclass
class PaddedCollator:
    """Right-padded batch: ``input_ids``/``labels``/``attention_mask`` of shape ``(B, max_len)``."""

    pad_token_id: int = 0
    ignore_index: int = IGNORE_INDEX

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        pairs = [_ids_and_labels(ex) for ex in examples]
        width = max(len(i) for i, _ in pairs)
        ids = [i + [self.pad_token_id] * (width - len(i)) for i, _ in pairs]
        lab = [l + [self.ignore_index] * (width - len(l)) for _, l in pairs]
        mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in pairs]
        n_loss = sum(sum(1 for t in l[1:] if t != self.ignore_index) for _, l in pairs)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(lab), "attention_mask": torch.tensor(mask),
                "num_tokens": sum(len(i) for i, _ in pairs), "num_loss_tokens": n_loss}


PACKED_MODEL_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                     "packed_seq_lens")


def packed_model_inputs(batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """The keyword arguments a transformers decoder takes for a packed batch (tensors moved to ``device``)."""
    out = {}
    for k in PACKED_MODEL_KEYS:
        v = batch[k]
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and device is not None else v
    return out


# --------------------------------------------------------------------------------------------------------------
# Attention that respects packing
# --------------------------------------------------------------------------------------------------------------

_BACKEND = {"name": "auto"}


def set_varlen_backend(name: str) -> None:
    """``"auto"`` (torch varlen on CUDA when importable, else the SDPA loop), ``"flash_attn"`` (the flash-attn
    package), ``"torch_varlen"`` or ``"sdpa_loop"``."""
    if name not in ("auto", "flash_attn", "torch_varlen", "sdpa_loop"):
        raise ValueError(name)
    _BACKEND["name"] = name


def get_varlen_backend(device: torch.device) -> str:
    name = _BACKEND["name"]
    if name != "auto":
        return name
    return "torch_varlen" if device.type == "cuda" and _torch_varlen() is not None else "sdpa_loop"


def select_varlen_backend(device: torch.device | str, num_heads: int = 16, num_kv_heads: int = 8,
                          head_dim: int = 128, dtype: torch.dtype = torch.bfloat16,
                          seq_lens: Sequence[int] = (700, 1, 1300, 500), tol: float = 5e-2) -> dict[str, Any]:
    """Choose and set (:func:`set_varlen_backend`) the backend for ``device``; returns what was chosen and why.

    Off CUDA: the per-example SDPA loop. On CUDA, the first of FlashAttention's ``flash_attn_varlen_func``
    (flash-attn package) and torch's varlen FlashAttention that imports, runs, and matches the loop (output,
    q and k gradients, max abs difference < ``tol``) on a random packed batch of this attention shape and
    dtype; otherwise the loop, with the reasons.
    """
    from thinksafe.trainers.kernels import flash_attn_varlen
    device = torch.device(device)
    if device.type != "cuda":
        set_varlen_backend("sdpa_loop")
        return {"backend": "sdpa_loop"}
    reasons = []
    for name, fn in (("flash_attn", flash_attn_varlen), ("torch_varlen", _torch_varlen)):
        if fn() is None:
            reasons.append(f"{name} not importable")
            continue
        try:
            err = _varlen_self_check(name, device, num_heads, num_kv_heads, head_dim, dtype, seq_lens)
        except Exception as e:          # noqa: BLE001 - recorded, and the next candidate is tried
            reasons.append(f"{name} failed: {type(e).__name__}: {e}"[:300])
            continue
        if err < tol:
            set_varlen_backend(name)
            return {"backend": name, "max_abs_diff_vs_sdpa_loop": err}
        reasons.append(f"{name} differs from the SDPA loop by {err:.3g}")
    set_varlen_backend("sdpa_loop")
    return {"backend": "sdpa_loop", "reason": "; ".join(reasons)}


def _varlen_self_check(name, device, num_heads, num_kv_heads, head_dim, dtype, seq_lens) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    T = sum(seq_lens)
    q = torch.randn(T, num_heads, head_dim, device=device, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(T, num_kv_heads, head_dim, device=device, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(T, num_kv_heads, head_dim, device=device, dtype=dtype, generator=g).requires_grad_()
    go = torch.randn(T, num_heads, head_dim, device=device, dtype=dtype, generator=g)
    outs = []
    for backend in (name, "sdpa_loop"):
        o = varlen_attention(q, k, v, seq_lens, scale=head_dim ** -0.5, backend=backend)
        gq, gk = torch.autograd.grad(o, (q, k), go)
        outs.append((o.float(), gq.float(), gk.float()))
    return max((a - b).abs().max().item() for a, b in zip(*outs))


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:          # noqa: BLE001 - older torch
        return None
    return varlen_attn


def varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, seq_lens: Sequence[int],
                     *, scale: float | None = None, cu_seqlens: torch.Tensor | None = None,
                     max_len: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Causal attention within each packed example.

    ``query``: ``(T, Hq, D)``; ``key``/``value``: ``(T, Hkv, D)`` with ``Hq % Hkv == 0`` (GQA). ``seq_lens``
    sums to T. Returns ``(T, Hq, D)``.
    """
    T, hq, d = query.shape
    hkv = key.shape[1]
    if sum(seq_lens) != T:
        raise ValueError(f"seq_lens sum to {sum(seq_lens)}, expected {T}")
    backend = backend or get_varlen_backend(query.device)
    if backend == "flash_attn":
        from thinksafe.trainers.kernels import flash_attn_varlen
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, *torch.tensor(list(seq_lens)).cumsum(0).tolist()], dtype=torch.int32)
        cu_seqlens = cu_seqlens.to(query.device, torch.int32, non_blocking=True)
        max_len = int(max_len if max_len is not None else max(seq_lens))
        return flash_attn_varlen()(query.contiguous(), key.contiguous(), value.contiguous(), cu_seqlens, cu_seqlens,
                                   max_len, max_len, softmax_scale=scale, causal=True)      # GQA built in
    if backend == "torch_varlen":
        fn = _torch_varlen()
        params = inspect.signature(fn).parameters
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, *torch.tensor(list(seq_lens)).cumsum(0).tolist()], dtype=torch.int32)
        cu_seqlens = cu_seqlens.to(query.device, torch.int32, non_blocking=True)
        max_len = int(max_len if max_len is not None else max(seq_lens))
        kw: dict[str, Any] = {}
        if "is_causal" in params:          # torch 2.9/2.10
            kw["is_causal"] = True
        else:                              # torch >= 2.11: window (left, right); (-1, 0) is causal
            kw["window_size"] = (-1, 0)
        if scale is not None:
            if "scale" in params:
                kw["scale"] = scale
            else:
                query = query * (scale * math.sqrt(d))
        if hq != hkv:
            if "enable_gqa" in params:
                kw["enable_gqa"] = True
            else:
                key = key.repeat_interleave(hq // hkv, dim=1)
                value = value.repeat_interleave(hq // hkv, dim=1)
        out = fn(query.contiguous(), key.contiguous(), value.contiguous(), cu_seqlens, cu_seqlens, max_len, max_len,
                 **kw)
        return out[0] if isinstance(out, tuple) else out
    # exact fallback: one causal SDPA call per example (kv heads repeated: SDPA's flash kernel then always applies)
    if hq != hkv:
        key = key.repeat_interleave(hq // hkv, dim=1)
        value = value.repeat_interleave(hq // hkv, dim=1)
    q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)     # (H, T, D)
    outs = []
    start = 0
    for n in seq_lens:
        n = int(n)
        if n == 0:
            continue
        sl = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(q[None, :, sl], k[None, :, sl], v[None, :, sl], is_causal=True,
                                                   scale=scale)[0])
        start += n
    return torch.cat(outs, dim=1).transpose(0, 1)


@torch.compiler.disable
def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, sliding_window: int | None = None, **kwargs):
    """transformers attention-interface entry: ``query`` ``(B, Hq, T, D)``, ``key``/``value`` ``(B, Hkv, T, D)``.

    Needs ``packed_seq_lens`` (or ``cu_seq_lens_q``) in the forward kwargs and batch size 1. Without them it
    raises :class:`PackedAttentionError`: transformers builds no mask for this implementation, so attending
    over the whole row would let every packed example see the ones before it.
    """
    seq_lens = kwargs.get("packed_seq_lens")
    cu = kwargs.get("cu_seq_lens_q")
    if seq_lens is None and cu is not None:
        seq_lens = [int(x) for x in torch.diff(cu.to("cpu")).tolist()]
    if seq_lens is None:
        raise PackedAttentionError(
            f"{VARLEN_ATTENTION} attention got no per-example lengths (packed_seq_lens / cu_seq_lens_q) in the "
            "forward call; full causal attention over a packed row would leak across examples. Pass the packed "
            "batch's keys (packed_model_inputs) or set the model's attention back (restore_attention)")
    if sliding_window is not None:
        raise NotImplementedError("varlen attention does not implement sliding windows")
    if dropout and module.training:
        raise NotImplementedError("varlen attention does not implement attention dropout")
    b, hq, t, d = query.shape
    if b != 1:
        raise ValueError(f"packed batches are one row; got batch size {b}")
    q = query.transpose(1, 2).reshape(t, hq, d)
    k = key.transpose(1, 2).reshape(t, key.shape[1], d)
    v = value.transpose(1, 2).reshape(t, value.shape[1], d)
    out = varlen_attention(q, k, v, seq_lens, scale=scaling, cu_seqlens=cu, max_len=kwargs.get("max_length_q"))
    return out.reshape(1, t, hq, d), None


def register_varlen_attention(name: str = VARLEN_ATTENTION) -> str:
    """Register :func:`varlen_attention_forward` with transformers under ``name``; returns ``name``.

    Set ``model.config._attn_implementation = name`` afterwards. transformers builds no mask for a
    registered implementation it has no mask function for, so nothing ``T x T`` is materialised.
    """
    from transformers import AttentionInterface
    AttentionInterface.register(name, varlen_attention_forward)
    return name

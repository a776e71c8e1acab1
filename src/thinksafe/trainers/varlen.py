"""An attention that respects packing: causal attention within each example of a packed row.

:func:`register_varlen_attention` registers a transformers attention implementation
(:data:`VARLEN_ATTENTION`) that attends only within each packed example (the rows
:class:`thinksafe.trainers.packing.PackedCollator` makes). It runs FlashAttention's varlen kernel (the
flash-attn package) or PyTorch's ``torch.nn.attention.varlen.varlen_attn`` on CUDA when they import and
match, else a loop of causal ``scaled_dot_product_attention`` calls, one per example (any device; exact).

Why a custom implementation: transformers' ``"sdpa"`` respects packed ``position_ids`` by building a dense
block-diagonal ``T x T`` mask, which disables SDPA's flash kernels and computes every masked block
(for a 16k-token row that is ~10x the attention work of the real examples). The varlen path does only the
per-example causal work.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "thinksafe_varlen"


class PackedAttentionError(RuntimeError):
    """The packed (varlen) attention was called without the per-example lengths of the packed row."""


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
    if sum(seq_lens) != T:
        raise ValueError(f"seq_lens sum to {sum(seq_lens)}, expected {T}")
    backend = backend or get_varlen_backend(query.device)
    if backend in ("flash_attn", "torch_varlen"):
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, *torch.tensor(list(seq_lens)).cumsum(0).tolist()], dtype=torch.int32)
        cu_seqlens = cu_seqlens.to(query.device, torch.int32, non_blocking=True)
        max_len = int(max_len if max_len is not None else max(seq_lens))
        if backend == "flash_attn":
            from thinksafe.trainers.kernels import flash_attn_varlen
            return flash_attn_varlen()(query.contiguous(), key.contiguous(), value.contiguous(), cu_seqlens,
                                       cu_seqlens, max_len, max_len, softmax_scale=scale, causal=True)  # GQA built in
        return _torch_varlen_call(query, key, value, cu_seqlens, max_len, scale)
    return _sdpa_loop(query, key, value, seq_lens, scale)


def _torch_varlen_call(query, key, value, cu_seqlens, max_len: int, scale: float | None) -> torch.Tensor:
    """torch's varlen FlashAttention, across the signatures of torch 2.9 to 2.11+."""
    fn = _torch_varlen()
    params = inspect.signature(fn).parameters
    hq, hkv, d = query.shape[1], key.shape[1], query.shape[2]
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
    out = fn(query.contiguous(), key.contiguous(), value.contiguous(), cu_seqlens, cu_seqlens, max_len, max_len, **kw)
    return out[0] if isinstance(out, tuple) else out


def _sdpa_loop(query, key, value, seq_lens: Sequence[int], scale: float | None) -> torch.Tensor:
    """The exact fallback: one causal SDPA call per example (kv heads repeated: SDPA's flash kernel then
    always applies)."""
    hq, hkv = query.shape[1], key.shape[1]
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

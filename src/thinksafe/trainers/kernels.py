"""Well-kept GPU kernels for packed training, used when installed and on CUDA (``pip install thinksafe[gpu]``).

* LM-head loss (``train.lm_head_loss``): Liger Kernel's fused linear cross-entropy
  (``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy``) or Apple's Cut
  Cross-Entropy (``cut_cross_entropy.linear_cross_entropy``). Both fuse ``hidden @ weight.T`` with the
  loss on the GPU and never hold a token × vocabulary logits tensor. ``torch`` is the pure-PyTorch chunked
  loss of :mod:`thinksafe.trainers.loss` (CPU, and the fallback).
* Packed attention: FlashAttention's ``flash_attn_varlen_func`` (the ``flash-attn`` package), next to
  torch's own varlen FlashAttention (``torch.nn.attention.varlen``); chosen in
  :func:`thinksafe.trainers.varlen.select_varlen_backend`.

``auto`` picks the first of liger, cce that imports, on CUDA only, and keeps it only if it gives the
chunked PyTorch loss and gradient on a small random problem (:func:`select_lm_head_loss`); otherwise the
PyTorch path, with the reason recorded in ``train_summary.json``. Naming a kernel that is not installed,
or asking for one off CUDA, is a configuration error.
"""

from __future__ import annotations

from typing import Any

import torch

from thinksafe.errors import ConfigError, MissingDependency
from thinksafe.validation import LM_HEAD_LOSSES
KERNEL_ORDER = ("liger", "cce")
INSTALL = {"liger": "pip install liger-kernel", "cce": "pip install cut-cross-entropy",
           "flash_attn": "pip install flash-attn --no-build-isolation"}


def _liger():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except Exception:          # noqa: BLE001 - not installed, or no triton
        return None
    return liger_fused_linear_cross_entropy


def _cce():
    try:
        from cut_cross_entropy import linear_cross_entropy
    except Exception:          # noqa: BLE001
        return None
    return linear_cross_entropy


def flash_attn_varlen():
    """``flash_attn.flash_attn_varlen_func`` when the flash-attn package imports, else None."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:          # noqa: BLE001 - not installed, or built for another torch / CUDA
        return None
    return flash_attn_varlen_func


_LOADERS = {"liger": _liger, "cce": _cce}


def available(name: str):
    return _LOADERS[name]()


def linear_ce_sum(name: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of -log softmax(hidden @ weight.T)[target]: ``hidden`` (N, H), ``targets`` (N,) with
    no ignored entries, via the kernel ``name`` (liger | cce)."""
    fn = available(name)
    if fn is None:
        raise MissingDependency(f"train.lm_head_loss={name} needs its package: {INSTALL[name]}")
    return fn(hidden.to(weight.dtype), weight, targets, reduction="sum").float()     # same call for both


def _self_check(name: str, device: torch.device, hidden_size: int, vocab: int, dtype: torch.dtype,
                tol: float = 2e-2) -> float:
    """Max relative difference (loss, d hidden, d weight) of kernel ``name`` vs the chunked PyTorch loss."""
    from thinksafe.trainers.loss import chunked_cross_entropy
    g = torch.Generator(device=device).manual_seed(0)
    n = 300
    h = (torch.randn(n, hidden_size, device=device, generator=g) * 0.5).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden_size, device=device, generator=g) * 0.02).to(dtype).requires_grad_()
    t = torch.randint(0, vocab, (n,), device=device, generator=g)
    out = []
    for which in (name, "torch"):
        if which == "torch":
            loss = chunked_cross_entropy(h, w, t, shift=False, reduction="sum")
        else:
            loss = linear_ce_sum(name, h, w, t)
        gh, gw = torch.autograd.grad(loss, (h, w))
        out.append((loss.detach().float(), gh.float(), gw.float()))
    return max(((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item() for a, b in zip(*out))


def select_lm_head_loss(requested: str, device: torch.device | str, hidden_size: int = 1024,
                        vocab: int = 4096, dtype: torch.dtype = torch.bfloat16, tol: float = 2e-2) -> dict[str, Any]:
    """``{"backend": name, "reason"?: why, "max_rel_diff_vs_torch"?: x}`` for ``train.lm_head_loss``."""
    if requested not in LM_HEAD_LOSSES:
        raise ConfigError(f"train.lm_head_loss must be one of {', '.join(LM_HEAD_LOSSES)}, got {requested!r}")
    device = torch.device(device)
    if requested == "torch":
        return {"backend": "torch"}
    if requested != "auto":
        if available(requested) is None:
            raise MissingDependency(f"train.lm_head_loss={requested} is not installed: {INSTALL[requested]}")
        if device.type != "cuda":
            raise ConfigError(f"train.lm_head_loss={requested} runs on CUDA only; use auto or torch here")
        return {"backend": requested}
    if device.type != "cuda":
        return {"backend": "torch", "reason": "not on CUDA"}
    reasons = []
    for name in KERNEL_ORDER:
        if available(name) is None:
            reasons.append(f"{name} not installed")
            continue
        try:
            err = _self_check(name, device, hidden_size, vocab, dtype)
        except Exception as e:          # noqa: BLE001 - recorded; the next candidate or PyTorch is used
            reasons.append(f"{name} failed: {type(e).__name__}: {e}"[:200])
            continue
        if err < tol:
            return {"backend": name, "max_rel_diff_vs_torch": err}
        reasons.append(f"{name} differs from the PyTorch loss by {err:.3g}")
    return {"backend": "torch", "reason": "; ".join(reasons)}

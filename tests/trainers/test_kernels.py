"""GPU kernels for packed training (thinksafe.trainers.kernels): which LM-head loss and packed attention
are chosen and why (CPU, with stand-ins for kernels that only run on CUDA), the kernel call path gives the
PyTorch loss, and, on CUDA with the packages installed, the real kernels give the same loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import thinksafe.trainers.kernels as K
import thinksafe.trainers.varlen as P
from thinksafe.errors import ConfigError, MissingDependency
from thinksafe.trainers.loss import chunked_cross_entropy


def _exact_linear_ce(hidden, weight, targets, reduction="sum", **kw):
    """A stand-in with the kernels' call signature, computed with full logits (CPU)."""
    return F.cross_entropy(hidden.float() @ weight.float().t(), targets, reduction=reduction)


def test_lm_head_loss_selection_off_cuda_and_unknown_names(monkeypatch):
    assert K.select_lm_head_loss("auto", "cpu") == {"backend": "torch", "reason": "not on CUDA"}
    assert K.select_lm_head_loss("torch", "cpu") == {"backend": "torch"}
    with pytest.raises(ConfigError, match="lm_head_loss"):
        K.select_lm_head_loss("fused", "cpu")
    monkeypatch.setitem(K._LOADERS, "liger", lambda: None)
    with pytest.raises(MissingDependency, match="pip install liger-kernel"):
        K.select_lm_head_loss("liger", "cpu")
    monkeypatch.setitem(K._LOADERS, "liger", lambda: _exact_linear_ce)
    with pytest.raises(ConfigError, match="CUDA only"):                   # installed, but no GPU here
        K.select_lm_head_loss("liger", "cpu")


def test_auto_on_cuda_takes_the_first_kernel_that_matches(monkeypatch):
    """The CUDA branch with stand-ins (the self-check itself runs on the CPU tensors it is given)."""
    real_device = torch.device
    monkeypatch.setattr(torch, "device", lambda d: type("D", (), {"type": "cuda"})() if d == "fake" else real_device(d))
    checks = []

    def check(name, *a, **k):
        checks.append(name)
        return {"liger": 0.5, "cce": 1e-4}[name]
    monkeypatch.setattr(K, "_self_check", check)
    monkeypatch.setitem(K._LOADERS, "liger", lambda: _exact_linear_ce)
    monkeypatch.setitem(K._LOADERS, "cce", lambda: _exact_linear_ce)
    got = K.select_lm_head_loss("auto", "fake")
    assert got["backend"] == "cce" and checks == ["liger", "cce"]          # liger differed: not used
    monkeypatch.setitem(K._LOADERS, "cce", lambda: None)
    got = K.select_lm_head_loss("auto", "fake")
    assert got["backend"] == "torch" and "liger differs" in got["reason"] and "cce not installed" in got["reason"]


def test_self_check_and_kernel_path_give_the_pytorch_loss(monkeypatch):
    monkeypatch.setitem(K._LOADERS, "liger", lambda: _exact_linear_ce)
    assert K._self_check("liger", torch.device("cpu"), 32, 97, torch.float32) < 1e-5
    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (40,), generator=g)
    a = K.linear_ce_sum("liger", h, w, t)
    b = chunked_cross_entropy(h, w, t, shift=False, reduction="sum", chunk_size=7)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ga, gb = torch.autograd.grad(a, (h, w)), torch.autograd.grad(b, (h, w))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_packed_lm_loss_through_a_kernel_equals_the_chunked_loss(tiny_organism, monkeypatch):
    from conftest import packing_examples, packing_model

    from thinksafe.trainers.packed import packed_lm_loss
    from thinksafe.trainers.packing import PackedCollator
    from thinksafe.trainers.varlen import VARLEN_ATTENTION, register_varlen_attention
    monkeypatch.setitem(K._LOADERS, "cce", lambda: _exact_linear_ce)
    _, examples = packing_examples(4)
    model, _ = packing_model("lora")
    register_varlen_attention()
    model.get_base_model().config._attn_implementation = VARLEN_ATTENTION
    batch = PackedCollator()(examples)
    n = torch.tensor(batch["num_loss_tokens"] + 5)                     # as if the step had more tokens
    a = packed_lm_loss(model, batch, num_items=n, kernel="cce")
    b = packed_lm_loss(model, batch, num_items=n, kernel="torch")
    assert a.item() > 1e-3
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    nothing = dict(batch, labels=torch.full_like(batch["labels"], -100))      # a micro-batch that learns nothing
    zero = packed_lm_loss(model, nothing, num_items=n, kernel="cce")
    assert zero.item() == 0.0 and zero.requires_grad


def test_flash_attn_is_called_as_its_api_and_chosen_before_torch_varlen(monkeypatch):
    calls = []

    def fake_flash(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False):
        calls.append((max_q, causal))
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
        cu = cu_q.tolist()
        return torch.cat([F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                                         v[s:e].transpose(0, 1), is_causal=causal,
                                                         scale=softmax_scale).transpose(0, 1)
                          for s, e in zip(cu, cu[1:])])
    monkeypatch.setattr(K, "flash_attn_varlen", lambda: fake_flash)
    torch.manual_seed(0)
    lens = [5, 1, 9, 3]
    q, k, v = torch.randn(18, 4, 8), torch.randn(18, 2, 8), torch.randn(18, 2, 8)
    ref = P.varlen_attention(q, k, v, lens, scale=0.3, backend="sdpa_loop")
    got = P.varlen_attention(q, k, v, lens, scale=0.3, backend="flash_attn")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert calls == [(9, True)]
    # selection: off CUDA always the exact loop, whatever is installed
    assert P.select_varlen_backend("cpu") == {"backend": "sdpa_loop"}
    # the CUDA branch's order and self-check, run on CPU tensors with the stand-in
    monkeypatch.setattr(P, "_varlen_self_check", lambda name, *a: {"flash_attn": 1e-3, "torch_varlen": 0.0}[name])
    real_device = torch.device
    monkeypatch.setattr(torch, "device", lambda d: type("D", (), {"type": "cuda"})() if d == "fake" else real_device(d))
    got = P.select_varlen_backend("fake")
    assert got["backend"] == "flash_attn" and P._BACKEND["name"] == "flash_attn"
    monkeypatch.setattr(K, "flash_attn_varlen", lambda: None)
    monkeypatch.setattr(P, "_torch_varlen", lambda: None)
    got = P.select_varlen_backend("fake")
    assert got["backend"] == "sdpa_loop" and "flash_attn not importable" in got["reason"]
    P.set_varlen_backend("auto")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger / Cut Cross-Entropy / flash-attn kernels run on CUDA only")
@pytest.mark.parametrize("name", ["liger", "cce"])
def test_real_kernel_gives_the_pytorch_loss_on_cuda(name):
    if K.available(name) is None:
        pytest.skip(f"{name} not installed ({K.INSTALL[name]})")
    assert K._self_check(name, torch.device("cuda"), 1024, 151_936, torch.bfloat16) < 2e-2

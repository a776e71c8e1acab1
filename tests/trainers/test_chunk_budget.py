"""Chunk sizes by memory budget (``train.ce_chunk_size`` / ``train.kl_chunk_size``: null = auto)."""

import pytest
import torch
import torch.nn.functional as F

from thinksafe.config import load_config
from thinksafe.trainers.kl import cross_entropy_per_token, forward_kl_per_token
from thinksafe.trainers.loss import CHUNK_BUDGET_BYTES, auto_chunk_rows, chunked_cross_entropy


def test_auto_rows_follow_the_vocabulary():
    big, small = auto_chunk_rows(151_936), auto_chunk_rows(1_024)
    assert big * 151_936 * 4 <= CHUNK_BUDGET_BYTES < (big + 1) * 151_936 * 4
    assert small > 100 * big                        # a 1k vocabulary gets far larger chunks
    assert auto_chunk_rows(151_936, torch.bfloat16) < big    # room for the bf16 matmul output too
    assert auto_chunk_rows(151_936, buffers=6) < big
    assert auto_chunk_rows(10**9) == 1


def test_defaults_are_auto():
    tc = load_config(None, []).train
    assert tc.ce_chunk_size is None and tc.kl_chunk_size is None
    assert load_config(None, ["train.ce_chunk_size=64"]).train.ce_chunk_size == 64


def _grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("precompute", [True, False])
def test_auto_and_explicit_chunks_give_the_same_loss_and_grads(precompute):
    torch.manual_seed(0)
    h = torch.randn(1, 40, 16, requires_grad=True)
    w = (torch.randn(300, 16) * 2).requires_grad_()
    y = torch.randint(0, 300, (1, 40))
    y[0, :6] = -100
    ref = F.cross_entropy((h @ w.t())[0, :-1], y[0, 1:])
    ref_g = _grads(ref, [h, w])
    for chunk in (None, 1, 7, 2048):
        loss = chunked_cross_entropy(h, w, y, chunk_size=chunk, precompute_grad=precompute)
        assert abs(float(loss - ref)) < 1e-5
        for a, b in zip(_grads(loss, [h, w]), ref_g):
            assert (a - b).abs().max() < 1e-5


def test_module_head_paths_accept_auto_chunks():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 300, bias=False)
    h = torch.randn(30, 16, requires_grad=True)
    y = torch.randint(0, 300, (30,))
    h_ref = torch.randn(30, 16)
    ce = {c: cross_entropy_per_token(h, y, head, c) for c in (None, 4)}
    kl = {c: forward_kl_per_token(h, h_ref, head, head, c) for c in (None, 4)}
    assert torch.allclose(ce[None], F.cross_entropy(head(h), y, reduction="none"), atol=1e-5)
    assert torch.allclose(ce[None], ce[4], atol=1e-5) and torch.allclose(kl[None], kl[4], atol=1e-5)
    g_auto, g_4 = _grads(kl[None].sum(), [h]), _grads(kl[4].sum(), [h])
    assert (g_auto[0] - g_4[0]).abs().max() < 1e-5
    with pytest.raises(ValueError):
        cross_entropy_per_token(h, y, head, 0)

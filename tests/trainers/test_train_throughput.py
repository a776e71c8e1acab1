"""Training-speed pieces: token-budget batching, padding-free packing, varlen attention, chunked CE, and the
benchmark script (official recipe vs ours: same loss and gradients; end to end on a tiny CPU shape)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from thinksafe.trainers.loss import chunked_cross_entropy
from thinksafe.trainers.packing import (PackedCollator, PaddedCollator, TokenBudgetBatchSampler, packed_model_inputs,
                                        plan_batches)
from thinksafe.trainers.varlen import VARLEN_ATTENTION, register_varlen_attention, varlen_attention

from conftest import ROOT
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def _tiny_model(bench, attn="sdpa", seed=0):
    model = bench.build_model(bench.TINY, torch.device("cpu"), torch.float32, attn, seed=seed, lora_dropout=0.0)
    with torch.no_grad():                     # LoRA B starts at 0: make the adapters matter for the gradients
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def packing_examples(bench, n=5, seed=3):
    spec = bench.LengthSpec(harmful_mean=40, benign_mean=90, max_len=300, min_len=6, prompt_mean=8)
    return bench.synthetic_examples(n, bench.TINY["vocab_size"], spec, seed=seed)


# ------------------------------------------------------------------------------------------- chunked CE
@pytest.mark.parametrize("precompute", [True, False])
@pytest.mark.parametrize("num_items", [None, 50])
def test_chunked_ce_equals_plain_ce_in_value_and_gradient(precompute, num_items):
    torch.manual_seed(0)
    h = torch.randn(2, 37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (2, 37))
    labels[:, :5] = -100
    labels[1, 20:] = -100
    got = chunked_cross_entropy(h, w, labels, chunk_size=7, num_items=num_items, precompute_grad=precompute)
    logits = (h @ w.T)[:, :-1].reshape(-1, 50)
    tgt = labels[:, 1:].reshape(-1)
    ref = F.cross_entropy(logits, tgt, reduction="sum") / num_items if num_items else F.cross_entropy(logits, tgt)
    g_got = torch.autograd.grad(got * 1.7, (h, w))
    g_ref = torch.autograd.grad(ref * 1.7, (h, w))
    assert abs(got.item() - ref.item()) < 1e-10
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_chunked_ce_fp32_no_shift_and_frozen_weight():
    torch.manual_seed(1)
    h = torch.randn(300, 32, requires_grad=True)
    w = torch.randn(97, 32)                   # frozen (tied embeddings under LoRA): no weight gradient
    labels = torch.randint(0, 97, (300,))
    labels[::3] = -100
    got = chunked_cross_entropy(h, w, labels, chunk_size=64, shift=False)
    ref = F.cross_entropy(h @ w.T, labels)
    (gg,) = torch.autograd.grad(got, h)
    (gr,) = torch.autograd.grad(ref, h)
    assert abs(got.item() - ref.item()) < 1e-5
    torch.testing.assert_close(gg, gr, rtol=1e-5, atol=1e-6)


def test_chunked_ce_without_counted_labels_is_zero_with_a_gradient():
    h = torch.randn(1, 4, 8, requires_grad=True)
    loss = chunked_cross_entropy(h, torch.randn(11, 8), torch.full((1, 4), -100))
    loss.backward()
    assert loss.item() == 0 and h.grad is not None and h.grad.abs().sum() == 0


# ------------------------------------------------------------------------------------------- batching
def test_plan_batches_respects_the_budget_and_covers_every_example():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 900, (200,), generator=g).tolist() + [1000, 1000]
    packed = plan_batches(lengths, 1000, seed=1)
    assert sorted(i for b in packed for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1000 for b in packed)
    assert sum(lengths) / (1000 * len(packed)) > 0.95        # best-fit decreasing packs tightly
    padded = plan_batches(lengths, 1000, padded=True, seed=1)
    assert sorted(i for b in padded for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) * len(b) <= 1000 for b in padded)
    assert plan_batches(lengths, 1000, seed=1) == packed                 # deterministic
    assert plan_batches(lengths, 1000, seed=2) != packed                 # batch order reshuffled
    assert all(len(b) <= 3 for b in plan_batches(lengths, 1000, seed=1, max_batch_size=3))
    with pytest.raises(ValueError, match="longer than token_budget"):
        plan_batches([5, 1001], 1000)
    sampler = TokenBudgetBatchSampler(lengths, 1000, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and len(sampler) == len(first)
    data = [{"input_ids": list(range(1, n + 1))} for n in lengths]        # labels default to input_ids
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=PackedCollator())
    rows = list(loader)
    assert len(rows) == len(first) and sum(r["num_tokens"] for r in rows) == sum(lengths)
    assert all(r["input_ids"].shape[1] <= 1000 for r in rows)


def test_packed_collator_restarts_positions_and_masks_boundaries():
    exs = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    b = PackedCollator()(exs)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9]]    # 8 is never predicted from 7
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 5] and b["cu_seq_lens_q"].dtype == torch.int32
    assert b["max_length_q"] == 3 and b["packed_seq_lens"] == (3, 2)
    assert b["num_tokens"] == 5 and b["num_loss_tokens"] == 3
    p = PackedCollator(pad_to=8, pad_token_id=1)(exs)
    assert p["input_ids"].shape == (1, 8) and p["packed_seq_lens"] == (3, 2, 3) and p["num_tokens"] == 5
    assert p["labels"][0, 5:].tolist() == [-100] * 3 and p["position_ids"][0, 5:].tolist() == [0, 1, 2]
    assert PackedCollator(pad_to=2500)(exs)["packed_seq_lens"] == (3, 2, 1024, 1024, 447)
    assert set(packed_model_inputs(b)) >= {"input_ids", "position_ids", "cu_seq_lens_q", "packed_seq_lens"}
    d = PaddedCollator()(exs)
    assert d["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]] and d["labels"][1, 2] == -100


def test_varlen_attention_equals_attention_per_example():
    torch.manual_seed(0)
    lens = [5, 1, 9, 3]
    q, k, v = torch.randn(18, 4, 8), torch.randn(18, 2, 8), torch.randn(18, 2, 8)
    got = varlen_attention(q, k, v, lens, scale=0.3, backend="sdpa_loop")
    start, ref = 0, []
    for n in lens:
        sl = slice(start, start + n)
        kk, vv = k[sl].repeat_interleave(2, 1), v[sl].repeat_interleave(2, 1)
        s = torch.einsum("qhd,khd->hqk", q[sl], kk) * 0.3
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        ref.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), vv))
        start += n
    torch.testing.assert_close(got, torch.cat(ref), rtol=1e-5, atol=1e-6)


def _reference_varlen(q, k, v, cu_q, causal, scale=None):
    assert q.shape[1] == k.shape[1], "this fake has no GQA: the caller must repeat kv heads"
    cu = cu_q.tolist()
    return torch.cat([F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                                     v[s:e].transpose(0, 1), is_causal=causal,
                                                     scale=scale).transpose(0, 1) for s, e in zip(cu, cu[1:])])


def _varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _reference_varlen(query, key, value, cu_seq_q, is_causal)


def _varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), enable_gqa=False):
    if enable_gqa:
        key = key.repeat_interleave(query.shape[1] // key.shape[1], 1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], 1)
    assert window_size in ((-1, -1), (-1, 0))
    return _reference_varlen(query, key, value, cu_seq_q, window_size == (-1, 0), scale)


@pytest.mark.parametrize("fake", [_varlen_2_10, _varlen_2_12])
def test_torch_varlen_call_matches_the_sdpa_loop_for_both_signatures(monkeypatch, fake):
    """The CUDA path (torch.nn.attention.varlen) cannot run here; check how it is called, with stand-ins
    for the two public signatures (torch 2.10: is_causal, no scale/GQA; >= 2.11: window_size, scale, GQA)."""
    import thinksafe.trainers.varlen as P
    monkeypatch.setattr(P, "_torch_varlen", lambda: fake)
    torch.manual_seed(0)
    lens = [5, 1, 9, 3]
    q, k, v = torch.randn(18, 4, 8), torch.randn(18, 2, 8), torch.randn(18, 2, 8)
    ref = varlen_attention(q, k, v, lens, scale=0.3, backend="sdpa_loop")
    got = varlen_attention(q, k, v, lens, scale=0.3, backend="torch_varlen")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- packing on a model
def _per_token_ce(logits, labels):
    return F.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="none", ignore_index=-100)


@torch.no_grad()
def test_packed_row_gives_the_per_token_loss_of_the_unpacked_examples(bench):
    register_varlen_attention()
    model = _tiny_model(bench).eval()
    base = model.get_base_model()
    exs = packing_examples(bench)
    batch = PackedCollator()(exs)
    ref = []
    for ex in exs:
        ids, lab = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
        ce = _per_token_ce(base(input_ids=ids).logits, lab)
        ref.append(torch.cat([torch.zeros(1), ce]))      # the first token of an example predicts nothing
    ref = torch.cat(ref)
    lab = batch["labels"]

    def packed(attn, **extra):
        base.config._attn_implementation = attn
        logits = base(**packed_model_inputs(batch), **extra).logits
        got = torch.cat([torch.zeros(1), _per_token_ce(logits, lab)])
        return got * (lab[0] != -100)

    ref = ref * (lab[0] != -100)
    torch.testing.assert_close(packed(VARLEN_ATTENTION), ref, rtol=0, atol=1e-5)
    # transformers' own sdpa also separates packed examples (dense block-diagonal mask from position_ids) ...
    torch.testing.assert_close(packed("sdpa"), ref, rtol=0, atol=1e-5)
    # ... and the check has teeth: one causal sequence over the row (boundaries ignored) differs
    base.config._attn_implementation = "sdpa"
    leaky = base(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                 attention_mask=torch.ones_like(batch["input_ids"])).logits
    leaky = torch.cat([torch.zeros(1), _per_token_ce(leaky, lab)]) * (lab[0] != -100)
    assert (leaky - ref).abs().max() > 1e-3


def test_official_and_ours_give_the_same_loss_and_gradients(bench):
    register_varlen_attention()
    exs = packing_examples(bench, n=6, seed=5)
    n_items = sum(bench.loss_tokens_of(e) for e in exs)
    model = _tiny_model(bench, attn="sdpa")
    params = [p for p in model.parameters() if p.requires_grad]

    official = sum(bench.official_example_loss(model, e, n_items, "cpu") for e in exs)
    g_official = torch.autograd.grad(official, params)

    model.get_base_model().config._attn_implementation = VARLEN_ATTENTION
    ours = bench.ours_loss(model, PackedCollator()(exs), chunk_size=16)
    g_ours = torch.autograd.grad(ours, params)
    assert abs(official.item() - ours.item()) < 1e-5
    for a, b in zip(g_official, g_ours):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # checkpointing some layers (ours' out-of-memory fallback) changes nothing
    bench.set_checkpointed_layers(model, 1)
    ckpt = bench.ours_loss(model, PackedCollator()(exs), chunk_size=16)
    for a, b in zip(torch.autograd.grad(ckpt, params), g_ours):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    bench.set_checkpointed_layers(model, 0)
    assert all("forward" not in layer.__dict__ for layer in model.get_base_model().model.layers)
    # the compile path hands the layout over through a context instead of kwargs: same loss
    model.get_base_model().config._attn_implementation = bench.register_attention() and bench.CONTEXT_ATTENTION
    ctx = bench.ours_loss(model, PackedCollator(pad_to=700)(exs), chunk_size=16, pass_packing_kwargs=False)
    assert abs(ctx.item() - ours.item()) < 1e-5


def test_flop_model_matches_qwen3_0_6b(bench):
    fm = bench.flop_model(bench.Qwen3Config(**bench.QWEN3_06B), bench._lora_count(bench.QWEN3_06B))
    assert fm["n_body"] == 28 * (1024 * 2048 * 2 + 2 * 1024 * 1024 + 3 * 1024 * 3072)     # 440,401,920
    assert fm["n_lm_head"] == 151936 * 1024
    assert fm["n_lora"] == 28 * 32 * (1024 + 2048 + 1024 + 1024)
    assert fm["attn_coef"] == 6 * 28 * 2048


# ------------------------------------------------------------------------------------------- end to end
def test_benchmark_runs_end_to_end_on_a_tiny_shape(tmp_path):
    out = tmp_path / "tt.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--methods", "official,ours",
                           "--examples", "12", "--budget-seconds", "0", "--deadline-seconds", "0",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| recipe | tok/s | vs official | MFU | peak memory |" in proc.stdout
    assert "| official |" in proc.stdout and "| ours |" in proc.stdout
    data = json.loads(out.read_text())
    rows = {r["recipe"]: r for r in data["results"]}
    assert set(rows) == {"official", "ours"}
    for r in rows.values():
        assert r["status"] == "ok" and r["tok_per_s"] > 0 and r["tokens"] > 0 and 0 < r["mfu"] < 1
    assert rows["official"]["vs_official"] == 1.0
    assert rows["ours"]["examples"] == 12 and rows["ours"]["padding_frac"] == 0
    assert rows["ours"]["loss_check"]["rel_diff"] < 1e-5
    assert data["sample"]["n"] == 12 and data["shape"]["num_hidden_layers"] == 2
    assert rows["official"]["examples"] == 12        # budget 0: every example, however slow the machine

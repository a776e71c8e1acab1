"""ThinkSafe+KL (thinksafe.trainers.kl): the chunked forward KL, the row weighting, the reference, and
the KLTrainer wiring (is_benign must survive TRL's column removal and collator)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from thinksafe.trainers.kl import (combine, cross_entropy_per_token, forward_kl_per_token, kl_sft_loss,
                                   loss_parts, model_reference, output_head, row_counts)
from conftest import peft_model, perturb_adapter, tiny_qwen3

VOCAB = 61


def batch(seed: int = 1, lengths=(9, 7, 12, 5), prompt=(3, 2, 4, 2), benign=(1, 0, 1, 1)):
    """Right-padded batch: input_ids, attention_mask, labels (-100 on prompt and padding), is_benign."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    am = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (n, p) in enumerate(zip(lengths, prompt)):
        ids[i, :n] = torch.randint(2, VOCAB, (n,), generator=g)
        am[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
    return ids, am, labels, torch.tensor(benign)


def naive_terms(model, ids, am, labels, benign):
    """Per-row mean CE and KL from FULL logits (no chunking, no shared code): lists per row."""
    out = model(input_ids=ids, attention_mask=am).logits.float()
    with torch.no_grad(), model.disable_adapter():
        ref = model(input_ids=ids, attention_mask=am).logits.float()
    logp, logr = F.log_softmax(out[:, :-1], -1), F.log_softmax(ref[:, :-1], -1)
    y = labels[:, 1:]
    m = y != -100
    ce = -logp.gather(-1, y.clamp(min=0)[..., None])[..., 0]
    kl = (logr.exp() * (logr - logp)).sum(-1)
    return ce, kl, m


# --------------------------------------------------------------------------- pure functions
def test_row_counts_and_combine_weighting():
    _, _, labels, benign = batch()
    counts = row_counts(labels, benign)
    # response tokens after the shift: n - p per row
    assert counts.tolist() == [7 - 2, (9 - 3) + (12 - 4) + (5 - 2), 1, 3]
    ce_sum, kl_sum = torch.tensor(25.0), torch.tensor(17.0)
    got = combine(ce_sum, kl_sum, counts)
    ce, kl = 25.0 / 5, 17.0 / 17
    assert got.item() == pytest.approx((ce * 1 + kl * 3) / 4)                 # rows weight the terms
    assert got.item() != pytest.approx((25.0 + 17.0) / 22, rel=1e-3)          # not tokens
    # benign-only / harmful-only: the other term vanishes
    assert combine(torch.tensor(0.0), kl_sum, torch.tensor([0, 17, 0, 3])).item() == pytest.approx(1.0)
    assert combine(ce_sum, torch.tensor(0.0), torch.tensor([5, 0, 1, 0])).item() == pytest.approx(5.0)


def test_chunked_equals_unchunked_values_and_grads():
    torch.manual_seed(0)
    head_s = torch.nn.Linear(16, 50, bias=False)
    head_r = copy.deepcopy(head_s).requires_grad_(False)
    with torch.no_grad():
        head_r.weight.add_(0.2 * torch.randn_like(head_r.weight))
    h_r = torch.randn(23, 16)
    y = torch.randint(0, 50, (23,))
    results = []
    for chunk in (4, 7, 10_000):
        h_s = torch.randn(23, 16, generator=torch.Generator().manual_seed(3)).requires_grad_()
        head_s.zero_grad()
        kl = forward_kl_per_token(h_s, h_r, head_s, head_r, chunk_size=chunk)
        ce = cross_entropy_per_token(h_s, y, head_s, chunk_size=chunk)
        (kl.sum() + ce.sum()).backward()
        results.append((kl.detach(), ce.detach(), h_s.grad.clone(), head_s.weight.grad.clone()))
    # reference implementation on full logits
    h_s = torch.randn(23, 16, generator=torch.Generator().manual_seed(3))
    logp, logr = F.log_softmax(head_s(h_s), -1), F.log_softmax(head_r(h_r), -1)
    full_kl = (logr.exp() * (logr - logp)).sum(-1)
    assert torch.allclose(results[-1][0], full_kl.detach(), atol=1e-6)
    assert torch.allclose(results[-1][1], F.cross_entropy(head_s(h_s), y, reduction="none").detach(), atol=1e-6)
    assert (full_kl > 0).all()
    for a in results[:-1]:
        for x, z in zip(a, results[-1]):
            assert torch.allclose(x, z, atol=1e-6)


def test_kl_chunked_equals_naive_full_logits_on_a_model():
    model = peft_model()
    perturb_adapter(model)
    ids, am, labels, benign = batch()
    ce, kl, m = naive_terms(model, ids, am, labels, benign)
    b = benign.bool()
    for chunk in (3, 512):
        loss, parts = kl_sft_loss(model, ids, am, labels, benign, chunk_size=chunk)
        assert parts["kl_sum"].item() == pytest.approx(kl[b][m[b]].sum().item(), rel=1e-5)
        assert parts["ce_sum"].item() == pytest.approx(ce[~b][m[~b]].sum().item(), rel=1e-5)
        assert int(parts["kl_tokens"]) == int(m[b].sum()) and int(parts["ce_tokens"]) == int(m[~b].sum())


# --------------------------------------------------------------------------- the loss on a LoRA model
def test_kl_is_zero_at_init_and_positive_after_a_step():
    model = peft_model(dropout=0.05)         # lora_B == 0: student == reference
    model.train()
    ids, am, labels, benign = batch()
    loss, parts = kl_sft_loss(model, ids, am, labels, benign, chunk_size=4)
    kl0 = (parts["kl_sum"] / parts["kl_tokens"]).item()
    assert abs(kl0) < 1e-7
    assert parts["ce_sum"].item() > 0            # the harmful row still has its CE
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss.backward()                              # CE of the harmful row moves the adapter
    opt.step()
    opt.zero_grad()
    _, parts = kl_sft_loss(model, ids, am, labels, benign, chunk_size=4)
    assert (parts["kl_sum"] / parts["kl_tokens"]).item() > 1e-6


def test_benign_rows_learn_no_cross_entropy():
    model = peft_model()
    ids, am, labels, _ = batch()
    benign = torch.ones(4, dtype=torch.long)
    # at init the KL is at its minimum: zero loss AND zero gradient; CE would push the adapter
    loss, parts = kl_sft_loss(model, ids, am, labels, benign)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert abs(loss.item()) < 1e-7
    assert all(g is None or g.abs().max() < 1e-7 for g in grads)
    assert parts["ce_tokens"].item() == 0
    # after a perturbation: the benign-only loss is exactly the token-mean KL, not CE
    perturb_adapter(model)
    ce, kl, m = naive_terms(model, ids, am, labels, benign)
    loss, _ = kl_sft_loss(model, ids, am, labels, benign)
    assert loss.item() == pytest.approx(kl[m].mean().item(), rel=1e-5)
    assert abs(loss.item() - ce[m].mean().item()) > 0.1
    assert abs(loss.item() - (kl[m].mean() + ce[m].mean()).item()) > 0.1


def test_loss_weighting_rows_not_tokens():
    model = peft_model()
    perturb_adapter(model)
    ids, am, labels, benign = batch(lengths=(14, 5, 6, 4), prompt=(2, 2, 2, 2), benign=(0, 1, 1, 1))
    ce, kl, m = naive_terms(model, ids, am, labels, benign)
    b = benign.bool()
    ce_mean, kl_mean = ce[~b][m[~b]].mean().item(), kl[b][m[b]].mean().item()
    loss, _ = kl_sft_loss(model, ids, am, labels, benign, chunk_size=5)
    assert loss.item() == pytest.approx((ce_mean * 1 + kl_mean * 3) / 4, rel=1e-5)
    # a token-weighted mix would differ (the harmful row has most of the tokens)
    n_ce, n_kl = m[~b].sum().item(), m[b].sum().item()
    token_weighted = (ce_mean * n_ce + kl_mean * n_kl) / (n_ce + n_kl)
    assert abs(loss.item() - token_weighted) > 1e-3


def test_adapter_on_lm_head_reference_uses_base_head():
    model = peft_model(targets=("q_proj", "lm_head"))
    perturb_adapter(model)
    ids, am, labels, benign = batch()
    ce, kl, m = naive_terms(model, ids, am, labels, benign)
    b = benign.bool()
    _, parts = kl_sft_loss(model, ids, am, labels, benign, chunk_size=3)
    assert parts["kl_sum"].item() == pytest.approx(kl[b][m[b]].sum().item(), rel=1e-5)


def test_full_finetuning_reference_is_a_frozen_copy():
    model = tiny_qwen3()
    ref = copy.deepcopy(model).requires_grad_(False)
    ids, am, labels, benign = batch()
    args = dict(ref_hidden=model_reference(ref), ref_head=output_head(ref), chunk_size=4)
    loss, parts = kl_sft_loss(model, ids, am, labels, benign, **args)
    assert abs(parts["kl_sum"].item()) < 1e-6
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad)
    assert all(p.grad is None for p in ref.parameters())
    _, parts = kl_sft_loss(model, ids, am, labels, benign, **args)
    assert parts["kl_sum"].item() / parts["kl_tokens"].item() > 1e-6


def test_loss_parts_memory_is_chunked(monkeypatch):
    """The LM head never sees more than chunk_size rows at once (no sequence x vocab logits)."""
    model = peft_model()
    ids, am, labels, benign = batch(lengths=(30, 25, 28, 20), prompt=(2, 2, 2, 2))
    head = output_head(model)
    seen = []
    handle = head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    try:
        loss, _ = kl_sft_loss(model, ids, am, labels, benign, chunk_size=8)
        loss.backward()
    finally:
        handle.remove()
    assert seen and max(seen) <= 8


# --------------------------------------------------------------------------- through TRL
@pytest.fixture()
def tiny_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")),
                                  pad_token="t0", eos_token="t1", unk_token="t2")
    return tok


def _dataset(n=8, seed=0):
    from datasets import Dataset
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 6 + i % 5
        ids = torch.randint(2, VOCAB, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:], "is_benign": int(i % 3 != 0)})
    return Dataset.from_list(rows)


def _trainer(tmp_path, tok, model, ds, **kw):
    from trl import SFTConfig

    from thinksafe.trainers.kl import KLTrainer
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=len(ds), learning_rate=0.05,
                     num_train_epochs=2, logging_steps=1, save_strategy="no", report_to="none",
                     max_length=None, remove_unused_columns=True, disable_tqdm=True, seed=0, data_seed=0,
                     dataloader_pin_memory=False, warmup_steps=0, lr_scheduler_type="constant",
                     use_cpu=True, **kw)
    return KLTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, kl_chunk_size=5)


def test_trainer_keeps_is_benign_and_logs_ce_kl(tmp_path, tiny_tokenizer):
    ds = _dataset()
    model = peft_model()
    trainer = _trainer(tmp_path, tiny_tokenizer, model, ds)
    b = next(iter(trainer.get_train_dataloader()))
    assert "is_benign" in b and b["is_benign"].shape == (len(ds),)
    assert sorted(b["is_benign"].tolist()) == sorted(ds["is_benign"])
    # the trainer's first loss equals the loss computed by hand on the same (whole-dataset) batch
    seen = []
    orig = trainer.compute_loss

    def spy(model_, inputs, *a, **k):
        if not seen:
            flags = inputs["is_benign"].clone()
            with torch.no_grad():
                ref, _ = kl_sft_loss(model_, inputs["input_ids"], inputs["attention_mask"],
                                     inputs["labels"], flags)
            seen.append(ref.item())
        return orig(model_, inputs, *a, **k)

    trainer.compute_loss = spy
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    assert logs[0]["loss"] == pytest.approx(seen[0], rel=1e-5)
    assert all("ce" in h and "kl" in h for h in logs)
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)     # step 1: adapter still at init
    assert logs[1]["kl"] > 1e-6                              # step 2: the CE step moved the student


def test_trainer_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_tokenizer):
    """Counts are taken over the whole optimiser step: 2 x 4 rows == 1 x 8 rows."""
    ds = _dataset()
    runs = []
    for bs, ga in ((8, 1), (4, 2)):
        from trl import SFTConfig

        from thinksafe.trainers.kl import KLTrainer
        model = peft_model()
        args = SFTConfig(output_dir=str(tmp_path / f"o{bs}"), per_device_train_batch_size=bs,
                         gradient_accumulation_steps=ga, learning_rate=0.05, num_train_epochs=3, logging_steps=1,
                         save_strategy="no", report_to="none", max_length=None, disable_tqdm=True, seed=0,
                         data_seed=0, dataloader_pin_memory=False, warmup_steps=0, lr_scheduler_type="constant",
                         use_cpu=True)
        trainer = KLTrainer(model=model, args=args, train_dataset=ds, processing_class=tiny_tokenizer)
        trainer.train()
        runs.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(runs[0]) == len(runs[1]) == 3
    assert runs[0] == pytest.approx(runs[1], rel=1e-4, abs=1e-6)
    assert runs[0][0] != pytest.approx(runs[0][-1])             # it did train


def test_loss_parts_signature_on_harmful_only_batch():
    model = peft_model()
    ids, am, labels, _ = batch()
    parts = loss_parts(model, ids, am, labels, torch.zeros(4, dtype=torch.long))
    assert parts["kl_tokens"].item() == 0 and parts["kl_sum"].item() == 0.0
    assert parts["kl_sum"].requires_grad and parts["ce_sum"].requires_grad

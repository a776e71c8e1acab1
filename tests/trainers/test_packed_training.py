"""`thinksafe train` with packing (thinksafe.trainers.packed): the packed trainers give the padded
trainers' loss and gradients on the same examples (sft and ThinkSafe+KL, LoRA and full fine-tuning),
gradient accumulation equals one big batch, the stage runs end to end and saves loadable outputs, and
models whose attention the packed path does not implement fall back to padded batches with a note."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import organism_config, packing_examples, packing_model, sft_rows, write_rows

from thinksafe.config import load_config
from thinksafe.organism import resolve_model_path
from thinksafe.stages import train
from thinksafe.trainers.setup import sft_config
from thinksafe.stages.train import make_trainer, packing_choice, packing_summary
from thinksafe.trainers.varlen import VARLEN_ATTENTION


def _trainer(tmp_path, tok, model, ref, examples, objective: str, packing: bool):
    from datasets import Dataset
    tc = load_config(None, [f"train.objective={objective}", f"train.packing={packing}", "train.ce_chunk_size=7",
                            "train.kl_chunk_size=5", "train.gradient_checkpointing=false"]).train
    args = sft_config(tc, tmp_path / f"ckpt-{packing}", seed=0, use_bf16=False)
    columns = ["input_ids", "labels"] + (["is_benign"] if objective == "kl" else [])
    ds = Dataset.from_list([{k: e[k] for k in columns} for e in examples])
    return make_trainer(tc, packing, ref_model=ref, model=model, args=args, train_dataset=ds,
                        processing_class=tok)


@pytest.mark.parametrize("objective, method", [("sft", "lora"), ("sft", "lora_head_module"), ("kl", "lora"),
                                               ("kl", "full")])
def test_packed_trainer_matches_padded_trainer(tiny_organism, tmp_path, monkeypatch, objective, method):
    """The trainer classes `thinksafe train` builds: same examples, same weights -> same loss, same grads.
    lora_head_module: the packed loss calls the LM head module chunk by chunk instead of the fused
    chunked cross-entropy on its weight (the path for soft-capped logits or a sharded head)."""
    from thinksafe.trainers import packed as packed_mod
    from thinksafe.trainers.packed import PackedKLTrainer, PackedSFTTrainer
    calls = []
    if method == "lora_head_module":
        monkeypatch.setattr(packed_mod, "_plain_head", lambda head: calls.append(head) or False)
    tok, examples = packing_examples(6)
    model, ref = packing_model(method)
    results, trainers = [], {}
    for packing in (False, True):
        m, r = copy.deepcopy(model), copy.deepcopy(ref)
        trainer = _trainer(tmp_path, tok, m, r, examples, objective, packing)
        trainers[packing] = trainer
        batch = trainer.data_collator(copy.deepcopy(examples))
        if packing:
            assert batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
            assert "attention_mask" not in batch
        else:
            assert batch["input_ids"].shape[0] == len(examples) and "attention_mask" in batch
        n_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        inputs = trainer._prepare_inputs(batch)
        fired = []               # hooks on the model itself (FSDP2 shards it in place) run around the loss
        hook = m.register_forward_pre_hook(lambda *a: fired.append(1))
        own_forward = m.__dict__.get("forward")          # TRL patches some models' forward
        loss = trainer.compute_loss(m, inputs, num_items_in_batch=n_items)
        hook.remove()
        assert fired and m.__dict__.get("forward") is own_forward
        params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [p for _, p in params])
        results.append((loss.detach(), int(n_items), {n: g for (n, _), g in zip(params, grads)}))
    assert isinstance(trainers[True], PackedKLTrainer if objective == "kl" else PackedSFTTrainer)
    (l0, n0, g0), (l1, n1, g1) = results
    assert n0 == n1                                       # same response-token count for the step
    assert l0.item() > 1e-3
    assert abs(l1.item() - l0.item()) < 1e-5 * max(1.0, abs(l0.item()))
    assert g0.keys() == g1.keys()
    assert bool(calls) == (method == "lora_head_module")
    assert max(g.abs().max().item() for g in g0.values()) > 1e-4
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)
    # the padded trainer's model never saw the packed attention; the packed one gives its own back after train()
    lm = lambda t: t.model.get_base_model() if hasattr(t.model, "get_base_model") else t.model   # noqa: E731
    assert lm(trainers[False]).config._attn_implementation == "sdpa"
    packed = trainers[True]
    assert lm(packed).config._attn_implementation == VARLEN_ATTENTION
    packed.args.max_steps = 1
    packed.train()
    assert lm(packed).config._attn_implementation == "sdpa"
    assert packed.state.global_step == 1 and packed.state.num_input_tokens_seen == \
        sum(len(e["input_ids"]) for e in examples[:packed.args.per_device_train_batch_size])


def test_packed_kl_counts_rows_and_tokens_like_padded():
    from thinksafe.trainers.kl import row_counts
    from thinksafe.trainers.packed import packed_row_counts
    from thinksafe.trainers.packing import PackedCollator, PaddedCollator
    exs = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}, {"input_ids": [9, 4], "labels": [9, 4]},
           {"input_ids": [3, 3, 3], "labels": [-100, 3, 3]}]
    flags = torch.tensor([1, 0, 1])
    packed, padded = PackedCollator()(exs), PaddedCollator()(exs)
    got = packed_row_counts(packed["labels"], flags, packed["packed_seq_lens"])
    assert got.tolist() == row_counts(padded["labels"], flags).tolist() == [1, 4, 1, 2]


# --------------------------------------------------------------------------- through `thinksafe train`
def _run(tmp_path, name, *sets, n=8):
    run_dir = tmp_path / name
    write_rows(run_dir, sft_rows(n))
    cfg = organism_config(run_dir, "train.lora.dropout=0", "train.lr=0.02", "train.scheduler=constant",
                          "train.gradient_checkpointing=false", *sets)
    s = train.run(cfg, run_dir, show=False)
    return run_dir, s, [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_train_stage_packed_end_to_end_and_gradient_accumulation(tiny_organism, tmp_path):
    """batch 8 x accum 1 (packed), batch 4 x accum 2 (packed) and batch 8 padded: one step, same loss,
    same gradient norm, same adapter; the packed run's summary and adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    big, s, log_big = _run(tmp_path, "b8", "train.batch_size=8")
    acc, s_acc, log_acc = _run(tmp_path, "b4x2", "train.batch_size=4", "train.grad_accum=2")
    pad, s_pad, log_pad = _run(tmp_path, "padded", "train.batch_size=8", "train.packing=false")
    assert s["steps"] == s_acc["steps"] == s_pad["steps"] == 1
    for log in (log_acc, log_pad):
        assert log[0]["loss"] == pytest.approx(log_big[0]["loss"], rel=1e-5)
        assert log[0]["grad_norm"] == pytest.approx(log_big[0]["grad_norm"], rel=1e-4)
    w = {name: load_file(d / "adapter" / "adapter_model.safetensors") for name, d in
         (("big", big), ("acc", acc), ("pad", pad))}
    assert any(torch.count_nonzero(v) for k, v in w["big"].items() if "lora_B" in k)
    for other in ("acc", "pad"):
        for k in w["big"]:
            torch.testing.assert_close(w[other][k], w["big"][k], rtol=1e-4, atol=1e-6, msg=k)
    # summary: packing facts, tokens, speed; the padded run says it was padded
    assert s["packing"] is True and s_pad["packing"] is False and "packing_note" not in s_pad
    assert s["packed_rows"] == 1 and s_acc["packed_rows"] == 2
    assert s["input_tokens_seen"] == s_pad["input_tokens_seen"] == s_acc["input_tokens_seen"]
    assert s["real_tokens_per_row"] == s["input_tokens_seen"]
    assert s["padding_tokens_avoided"] > 0 and 0 < s["padding_frac_avoided"] < 1
    assert s["tokens_per_second"] > 0 and s["varlen_backend"] == "sdpa_loop"          # CPU: the exact loop
    assert json.loads((big / "train_summary.json").read_text()) == s
    # the adapter loads into a fresh base with its own attention; nothing of the packed attention was saved
    cfg_text = (big / "adapter" / "adapter_config.json").read_text()
    assert VARLEN_ATTENTION not in cfg_text
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path("organism")),
                                      str(big / "adapter"))
    assert model.get_base_model().config._attn_implementation == "sdpa"


def test_kl_packed_run_matches_padded_run(tiny_organism, tmp_path):
    _, s, log = _run(tmp_path, "kl_packed", "train.objective=kl", "train.batch_size=4", "train.grad_accum=2")
    _, s_pad, log_pad = _run(tmp_path, "kl_padded", "train.objective=kl", "train.batch_size=8",
                             "train.packing=false")
    assert s["packing"] is True and s_pad["packing"] is False and s["objective"] == "kl"
    assert log[0]["loss"] == pytest.approx(log_pad[0]["loss"], rel=1e-5)
    assert log[0]["grad_norm"] == pytest.approx(log_pad[0]["grad_norm"], rel=1e-4)
    assert log[0]["ce"] == pytest.approx(log_pad[0]["ce"], rel=1e-5) and log[0]["kl"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- models the packed path cannot train
def test_unsupported_attention_falls_back_with_a_note():
    from transformers import MistralConfig, Qwen2Config, Qwen3Config

    from thinksafe.trainers.packed import packing_unsupported
    tc = load_config(None, []).train
    assert tc.packing is True
    assert packing_unsupported(Qwen3Config()) is None
    assert packing_unsupported(Qwen2Config()) is None                        # R1-Distill-Qwen: no window in use
    cases = [Qwen3Config(use_sliding_window=True, sliding_window=64, max_window_layers=1, num_hidden_layers=2),
             MistralConfig(sliding_window=4096), Qwen3Config(attention_dropout=0.1)]
    for cfg in cases:
        reason = packing_unsupported(cfg)
        assert reason, cfg
        packing, note = packing_choice(tc, cfg)
        assert packing is False and reason in note and "padded" in note
        summary = packing_summary(None, packing, note)
        assert summary == {"packing": False, "packing_note": note}
    assert packing_choice(tc, Qwen3Config()) == (True, None)
    off = load_config(None, ["train.packing=false"]).train
    assert packing_choice(off, cases[0]) == (False, None)

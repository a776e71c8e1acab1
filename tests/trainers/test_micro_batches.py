"""Token-budget micro-batches inside the paper's step (train.micro_batch_tokens): the gradient of a step
cut by tokens equals the official padded batch 1 x 8 accumulation steps (sft and ThinkSafe+KL), steps,
epochs and the learning-rate schedule are unchanged, two processes match one, the packed attention
refuses a call without per-example lengths, and the automatic gradient checkpointing decision."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import packing_examples, packing_model
from conftest import organism_config, sft_rows, write_rows

from thinksafe.config import load_config
from thinksafe.errors import ConfigError
from thinksafe.stages import train
from thinksafe.trainers.setup import sft_config
from thinksafe.stages.train import make_trainer
from thinksafe.trainers.microbatch import checkpointing_needed, plan_micro_batches, split_step
from thinksafe.trainers.packing import PackedCollator
from thinksafe.trainers.varlen import VARLEN_ATTENTION, PackedAttentionError, register_varlen_attention
from conftest import ROOT


# --------------------------------------------------------------------------- planning and slicing
def test_plan_respects_the_budget_and_keeps_every_example_once():
    lens = [70, 300, 20, 90, 150, 5, 60, 80]
    plan = plan_micro_batches(lens, 200)
    assert sorted(i for g in plan for i in g) == list(range(len(lens)))
    for g in plan:
        assert len(g) == 1 or sum(lens[i] for i in g) <= 200
    assert [1] in plan                                   # over the budget: alone, not cut, not dropped
    assert len(plan) <= 5                                # best fit: 775 tokens -> few micro-batches
    assert plan_micro_batches(lens, 10_000) == [list(range(len(lens)))]
    with pytest.raises(ValueError):
        plan_micro_batches(lens, 0)


def test_split_step_slices_whole_examples_and_pads_with_rows_that_learn_nothing():
    exs = [{"input_ids": list(range(10, 10 + n)), "labels": [-100] * 2 + list(range(12, 10 + n))}
           for n in (6, 3, 5, 4)]
    batch = PackedCollator()(exs)
    batch["is_benign"] = torch.tensor([1, 0, 0, 1])
    parts = split_step(batch, 9, count=4)
    assert len(parts) == 4
    real, pad = parts[:2], parts[2:]                     # 6+3 and 5+4 tokens, then two that learn nothing
    assert sorted(n for p in real for n in p["packed_seq_lens"]) == [3, 4, 5, 6]
    for p in real:
        lens = list(p["packed_seq_lens"])
        assert sum(lens) == p["input_ids"].shape[1] == p["num_tokens"] <= 9
        assert p["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lens).cumsum(0).tolist()]
        assert p["position_ids"][0].tolist() == [j for n in lens for j in range(n)]
        assert len(p["is_benign"]) == len(lens)
    # every learned label of the step lands in exactly one micro-batch, with its benign flag
    learned = sorted(int(x) for p in real for x in p["labels"][0] if x != -100)
    assert learned == sorted(int(x) for x in batch["labels"][0] if x != -100)
    assert sum(p["num_loss_tokens"] for p in real) == batch["num_loss_tokens"]
    for p in pad:
        assert p["num_loss_tokens"] == 0 and (p["labels"] == -100).all() and p["packed_seq_lens"] == (3,)


# --------------------------------------------------------------------------- the gradient of the paper's step
def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _step_grads(tmp_path, tok, model, ref, examples, objective, micro: int | None):
    """Gradient of one optimiser step of 8 examples through the trainer's own training_step:
    micro: one batch of 8, cut into micro-batches of <= micro tokens; None: padded batch 1 x 8 accumulation."""
    from datasets import Dataset
    sets = [f"train.objective={objective}", "train.gradient_checkpointing=false", "train.ce_chunk_size=7",
            "train.kl_chunk_size=5", "train.batch_size=1", "train.grad_accum=8"]
    sets += [f"train.micro_batch_tokens={micro}"] if micro else ["train.packing=false"]
    tc = load_config(None, sets).train
    args = sft_config(tc, tmp_path / f"ckpt-{micro}", seed=0, use_bf16=False, micro_batch_tokens=micro)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == ((8, 1) if micro else (1, 8))
    columns = ["input_ids", "labels"] + (["is_benign"] if objective == "kl" else [])
    ds = Dataset.from_list([{k: e[k] for k in columns} for e in examples])
    trainer = make_trainer(tc, bool(micro), ref_model=ref, model=model, args=args, train_dataset=ds,
                           processing_class=tok)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    batches = [trainer.data_collator(copy.deepcopy(examples))] if micro else \
        [trainer.data_collator(copy.deepcopy([e])) for e in examples]
    it = iter(batches)
    batches, n_items = trainer.get_batch_samples(it, len(batches), torch.device("cpu"))
    model.zero_grad()
    loss = sum(trainer.training_step(model, b, n_items) for b in batches)
    return loss.item(), _grads(model), trainer


@pytest.mark.parametrize("objective, method", [("sft", "lora"), ("kl", "lora"), ("kl", "full")])
def test_token_budget_step_equals_the_padded_1x8_step(tiny_organism, tmp_path, objective, method):
    tok, examples = packing_examples(8)
    model, ref = packing_model(method)
    runs = {}
    for micro in (None, 160, 10_000):            # 160 tokens: 4-5 micro-batches of the 8 examples; 10k: one
        m, r = copy.deepcopy(model), copy.deepcopy(ref)
        runs[micro] = _step_grads(tmp_path, tok, m, r, examples, objective, micro)
    loss0, g0, _ = runs[None]
    assert loss0 > 1e-3 and max(g.abs().max().item() for g in g0.values()) > 1e-4
    parts = runs[160][2].micro_batch_stats.tolist()
    assert parts[0] == 1 and parts[1] >= 4 and parts[3] <= 160       # one step, several micro-batches
    assert runs[10_000][2].micro_batch_stats.tolist()[1] == 1
    for micro in (160, 10_000):
        loss, g, _ = runs[micro]
        assert loss == pytest.approx(loss0, rel=1e-5)
        assert g.keys() == g0.keys()
        for name in g0:
            torch.testing.assert_close(g[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


# --------------------------------------------------------------------------- through `thinksafe train`
def _run(tmp_path, name, *sets, n=20):
    run_dir = tmp_path / name
    write_rows(run_dir, sft_rows(n))
    cfg = organism_config(run_dir, "train.lora.dropout=0", "train.lr=0.02", "train.epochs=2",
                          "train.gradient_checkpointing=false", "train.batch_size=1", "train.grad_accum=8", *sets)
    s = train.run(cfg, run_dir, show=False)
    return s, [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_train_stage_token_budget_keeps_steps_schedule_and_losses(tiny_organism, tmp_path):
    """20 examples, 2 epochs, batch 1 x 8: the same 6 steps (the last of each epoch holds 4 examples),
    the same learning rates and the same per-step losses as the padded official layout."""
    s_pad, log_pad = _run(tmp_path, "padded", "train.packing=false", "train.micro_batch_tokens=200")
    s, log = _run(tmp_path, "budget", "train.micro_batch_tokens=200")
    assert s["steps"] == s_pad["steps"] == 6 and s["epochs"] == s_pad["epochs"]
    assert [h["learning_rate"] for h in log] == pytest.approx([h["learning_rate"] for h in log_pad])
    assert len({h["learning_rate"] for h in log}) > 1                        # cosine: the schedule moves
    for a, b in zip(log, log_pad):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    assert s["micro_batch_tokens"] == 200 and s["max_tokens_per_micro_batch"] <= 200
    assert s["packed_rows"] == round(s["micro_batches_per_step"] * 6) and s["micro_batches_per_step"] >= 2
    assert s["tokens_per_micro_batch"] * s["packed_rows"] == pytest.approx(s["input_tokens_seen"], abs=1)
    assert s["input_tokens_seen"] == s_pad["input_tokens_seen"]
    assert s["gradient_checkpointing"] is False and "micro_batch_tokens" not in s_pad
    assert "micro_batch_tokens ignored without packing" in s_pad["packing_note"] and "packing_note" not in s


def test_ddp_two_processes_with_token_budget_match_one(tmp_path):
    """2 processes x (1 x 4 accumulation), cut into token-budget micro-batches (several per process, no_sync until the last) == 1 x 8."""
    from safetensors.torch import load_file
    from conftest import launch, read_log, two_runs
    cfg, one, two = two_runs(tmp_path)
    common = ["train", str(cfg), "--set", "train.objective=kl"]
    launch(common + ["--set", "train.batch_size=8"], 1, one)
    launch(common + ["--set", "train.batch_size=1", "--set", "train.grad_accum=4", "--set",
                     "train.micro_batch_tokens=150"], 2, two, "torchrun")
    a, b = read_log(one), read_log(two)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-7)
    s2 = json.loads((two / "train_summary.json").read_text())
    assert s2["world_size"] == 2 and s2["micro_batches_per_step"] >= 4          # >= 2 per process
    w1 = load_file(one / "adapter" / "adapter_model.safetensors")
    w2 = load_file(two / "adapter" / "adapter_model.safetensors")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=5e-5, rtol=1e-3), k


# --------------------------------------------------------------------------- packed attention without lengths
def test_packed_attention_without_lengths_raises(tiny_organism):
    from transformers import AutoModelForCausalLM

    from thinksafe.organism import resolve_model_path
    register_varlen_attention()
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("organism"), dtype=torch.float32)
    model.config._attn_implementation = VARLEN_ATTENTION
    batch = PackedCollator()([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    with pytest.raises(PackedAttentionError, match="per-example lengths"):
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                packed_seq_lens=batch["packed_seq_lens"])
    alone = model(input_ids=batch["input_ids"][:, 3:], position_ids=batch["position_ids"][:, 3:],
                  packed_seq_lens=(2,))
    torch.testing.assert_close(out.logits[0, 3:], alone.logits[0], rtol=1e-4, atol=1e-5)   # no leak


# --------------------------------------------------------------------------- configs and checkpointing
def test_packaged_real_model_configs_use_token_budget_and_auto_checkpointing():
    from pathlib import Path

    import thinksafe
    folder = Path(thinksafe.__file__).parent / "configs"
    names = sorted(p.name for p in folder.glob("*.yaml") if p.name.startswith(("qwen3-", "r1-")))
    assert len(names) == 7
    for name in names:
        tc = load_config(folder / name).train
        assert tc.micro_batch_tokens and tc.micro_batch_tokens >= tc.max_length, name
        assert tc.batch_size * tc.grad_accum == 8 and tc.gradient_checkpointing is None, name
        assert tc.packing and not tc.group_by_length, name
    assert load_config(None, []).train.micro_batch_tokens is None
    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        load_config(None, ["train.micro_batch_tokens=0"])


def test_checkpointing_decided_from_budget_and_shape():
    from transformers import Qwen3Config
    small = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128)
    large = Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128)
    h200 = 139 * 2 ** 30
    on, why = checkpointing_needed(small, 32768, h200, weight_bytes=1.2e9)
    assert on is False and "off" in why
    assert checkpointing_needed(large, 32768, h200, weight_bytes=16e9)[0] is True       # Qwen3-8B: ~200 GiB
    assert checkpointing_needed(small, 32768, 24 * 2 ** 30)[0] is True                    # a 24 GiB card
    assert checkpointing_needed(small, 16384, h200, logits=True)[0] is False
    assert checkpointing_needed(small, 2 ** 17, h200, logits=True)[0] is True              # padded logits count
    assert checkpointing_needed(large, 10 ** 6, None) == (False, "no accelerator: gradient checkpointing off")
    tc = load_config(None, ["train.gradient_checkpointing=null"]).train
    model, _ = packing_model("lora")
    on, note = train.checkpointing_choice(tc, model, packing=True)
    assert on is (torch.cuda.is_available() and on) and "auto" in note
    assert train.checkpointing_choice(load_config(None, []).train, model, True) == (True, None)


# --------------------------------------------------------------------------- the benchmark rows and the GPU script
def test_shipped_benchmark_rows_train_the_same_examples(tmp_path):
    """train_throughput.py's `thinksafe train` rows at a tiny shape: with and without token budgets, the same
    timed steps and tokens, more examples per forward pass with the budget."""
    import subprocess
    import sys
    root = ROOT
    out = tmp_path / "tt.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "train_throughput.py"), "--tiny", "--device",
                           "cpu", "--methods", "shipped_1x8,shipped", "--examples", "40", "--budget-seconds", "30",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["recipe"]: r for r in json.loads(out.read_text())["results"]}
    old, new = rows["shipped_1x8"], rows["shipped"]
    assert old["status"] == new["status"] == "ok"
    assert old["optimizer_steps"] == new["optimizer_steps"] == 3 and old["tokens"] == new["tokens"] > 0
    assert old["micro_batches_per_step"] == 8 and 1 <= new["micro_batches_per_step"] < 8
    assert new["micro_batch_tokens"] == 512 and new["tokens_per_micro_batch"] <= 512
    assert new["lm_head_loss"]["backend"] == "torch" and new["gradient_checkpointing"] is False
    check = subprocess.run(["bash", "-n", str(root / "benchmarks" / "gpu_train_check.sh")], capture_output=True)
    assert check.returncode == 0, check.stderr


def test_deepspeed_refuses_token_budgets_with_one_line():
    from thinksafe.trainers.microbatch import MicroBatchTraining
    ds = type("DS", (MicroBatchTraining,), {"is_deepspeed_enabled": True})()
    with pytest.raises(ConfigError, match="not supported with DeepSpeed"):
        ds._init_micro_batches(32768)
    ds._init_micro_batches(None)                          # off: the accumulation layout, as before
    assert ds.micro_batch_tokens is None


def test_every_process_runs_as_many_micro_batches_as_the_busiest():
    """_plan_step with a stand-in for a 2-process accelerator whose other process needs 3 micro-batches."""
    from types import SimpleNamespace

    from thinksafe.trainers.microbatch import MicroBatchTraining
    other = torch.tensor([3, 900, 320])

    class Acc:
        num_processes = 2

        def gather(self, t):
            return torch.cat([t, other])
    mb = type("MB", (MicroBatchTraining,), {})()
    mb.accelerator, mb.args = Acc(), SimpleNamespace(device=torch.device("cpu"))
    mb._init_micro_batches(300)
    assert mb._plan_step((100, 120, 50)) == 3                  # this process alone: one micro-batch
    assert mb.micro_batch_stats.tolist() == [1, 6, 1170, 320]  # 3 passes on each of 2 processes
    batch = PackedCollator()([{"input_ids": list(range(n)), "labels": list(range(n))} for n in (100, 120, 50)])
    parts = split_step(batch, 300, 3)
    assert len(parts) == 3 and [p["num_loss_tokens"] > 0 for p in parts] == [True, False, False]

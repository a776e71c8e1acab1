"""The ``shipped`` row of train_throughput.py: `thinksafe train` as shipped, timed.

The trainer the train stage builds (``thinksafe.stages.train.make_trainer`` + ``sft_config``) with the train
section of the packaged ``qwen3-0.6b.yaml`` (batch 1 x 8 accumulation = the paper's step of 8 examples,
``micro_batch_tokens`` 32768, ``gradient_checkpointing: null`` = auto, ``lm_head_loss: auto``), on the
benchmark's pre-tokenized synthetic sample and its random-weight model (LoRA already applied, as the stage
does). Only the tokenization of text and the model loading of the stage are left out. Steps are timed by a
callback (CUDA synchronised) after ``WARMUP`` optimiser steps, until the sample or ``--budget-seconds`` ends.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

WARMUP = 2


def _tokenizer(vocab_size: int):
    """A stand-in tokenizer: the sample is already tokenized; the Trainer only needs pad / eos ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def shipped_train_config(micro_batch_tokens: int | None = None):
    """The packaged qwen3-0.6b.yaml train section; ``micro_batch_tokens`` 0 = off (the layout before token
    budgets: one packed example per forward pass, 8 accumulation steps), None = the packaged value."""
    from thinksafe.config import load_config
    folder = Path(__file__).resolve().parents[1] / "src" / "thinksafe" / "configs"
    sets = ["train.logging_steps=1000000"]
    if micro_batch_tokens is not None:
        sets.append(f"train.micro_batch_tokens={micro_batch_tokens or 'null'}")
    return load_config(folder / "qwen3-0.6b.yaml", sets).train


def run_shipped(args, shape, examples, device, dtype, build_model, sync, peak_gib,
                micro_batch_tokens: int | None = None) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from thinksafe.trainers.setup import sft_config
    from thinksafe.stages.train import checkpointing_choice, make_trainer
    tc = shipped_train_config(micro_batch_tokens)
    model = build_model(shape, device, dtype, "sdpa")
    checkpointing, ckpt_note = checkpointing_choice(tc, model, packing=True)
    step_examples = tc.batch_size * tc.grad_accum
    n_steps = len(examples) // step_examples
    if n_steps <= WARMUP:
        raise ValueError(f"shipped: need more than {WARMUP * step_examples} examples, got {len(examples)}")
    ds = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    out_dir = Path(tempfile.mkdtemp(prefix="ts_shipped_"))
    targs = sft_config(tc, out_dir, args.seed, device.type == "cuda", tc.micro_batch_tokens, checkpointing)
    targs.max_steps = n_steps
    targs.save_strategy = "no"
    trainer = make_trainer(tc, True, model=model, args=targs, train_dataset=ds,
                           processing_class=_tokenizer(shape["vocab_size"]))
    trainer.remove_callback(PrinterCallback)
    lengths: list[list[int]] = []
    losses: list[int] = []
    inner = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        lengths.append([int(n) for n in inputs["packed_seq_lens"]])
        losses.append(int((inputs["labels"][..., 1:] != -100).sum()))
        return inner(model, inputs, num_items_in_batch)
    trainer.training_step = training_step
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            sync(device)
            marks.append(time.perf_counter())
            if len(marks) > WARMUP and marks[-1] - marks[WARMUP - 1] > args.budget_seconds:
                control.should_training_stop = True

    trainer.add_callback(Clock())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    mb = trainer.micro_batch_stats.tolist() if tc.micro_batch_tokens else [len(marks), len(lengths), 0, 0]
    per_step = max(len(lengths) // len(marks), 1)          # training_step calls per optimiser step
    lens = [n for step in lengths[WARMUP * per_step:] for n in step]
    res = {"seconds": marks[-1] - marks[WARMUP - 1], "tokens": sum(lens), "micro_steps": len(marks) - WARMUP,
           "optimizer_steps": len(marks) - WARMUP, "examples": len(lens), "lengths": lens,
           "loss_tokens": losses[WARMUP * per_step:], "peak_gib": peak_gib(device),
           "gradient_checkpointing": checkpointing, "gradient_checkpointing_note": ckpt_note,
           "micro_batch_tokens": tc.micro_batch_tokens,
           "micro_batches_per_step": mb[1] / mb[0] if mb[0] else None,
           "tokens_per_micro_batch": (mb[2] / mb[1] if mb[1] else None) if tc.micro_batch_tokens else None,
           "lm_head_loss": trainer.lm_head_backend, "varlen_backend": trainer.varlen_backend,
           "note": (f"thinksafe train (qwen3-0.6b.yaml: batch {tc.batch_size} x {tc.grad_accum}, "
                    f"micro_batch_tokens {tc.micro_batch_tokens}, checkpointing {checkpointing})")}
    del trainer, model
    return res

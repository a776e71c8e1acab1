"""train: SFT on (original prompt, self-generated response), loss on the response only.

The training text is built here, not by a collator: prompt = the chat template's generation prompt
for the ORIGINAL prompt, target = the full response (``<think>`` trace included) + EOS. Labels are
-100 on every prompt token. Examples longer than ``max_length`` are dropped (``truncation: drop``,
the default) or cut to ``max_length`` (``truncation: cut``); both are counted in the summary.

``method``: ``lora`` (PEFT adapter -> ``adapter/``) or ``full`` (whole model -> ``model/``).
``objective``: ``sft`` (cross-entropy), ``kl`` (ThinkSafe+KL, see ``thinksafe.trainers.kl``) or ``opsa``
(on-policy self-distillation, ``thinksafe.stages.opsa``).
``packing`` (default): each micro-batch of ``batch_size`` examples is packed into one row without
padding, attended per example, with a chunked LM-head cross-entropy (``thinksafe.trainers.packed``);
``packing: false`` trains on TRL's padded batches with TRL's loss. A model whose attention the packed
path does not implement (sliding windows, attention dropout) trains padded, with a note in the
summary. ``micro_batch_tokens``: each step's batch_size × grad_accum examples are drawn as one batch and
cut into packed micro-batches by tokens (``thinksafe.trainers.microbatch``; same steps, same gradient).
Multi-GPU: launch this stage with ``accelerate launch``; only the main process writes files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from thinksafe.errors import ConfigError, DataError
from thinksafe.io import read_jsonl, write_json
from thinksafe.organism import resolve_model_path
from thinksafe.runtime import family_of
from thinksafe.trainers.examples import (
    tokenize_rows_stats,
)
from thinksafe.trainers.setup import (
    FULL_OUTPUT,
    OUTPUT,
    check_reporter,
    check_train_config,
    is_main_process,
    lora_config,
    progress_callback,
    sft_config,
    unmatched_targets,
)

INPUT = "sft.jsonl"


def packing_choice(tc, model_config) -> tuple[bool, str | None]:
    """(pack?, note): ``train.packing`` unless the model's attention rules it out (then a note says why)."""
    if not tc.packing:
        return False, None
    from thinksafe.trainers.packed import packing_unsupported
    reason = packing_unsupported(model_config)
    if reason:
        return False, f"train.packing=true ignored: {reason}; trained on padded batches"
    return True, None


def micro_batching(tc, packing: bool) -> int | None:
    """``train.micro_batch_tokens`` when it applies (packed training), else None."""
    return getattr(tc, "micro_batch_tokens", None) if packing else None


def checkpointing_choice(tc, model, packing: bool) -> tuple[bool, str | None]:
    """(gradient checkpointing?, why): ``train.gradient_checkpointing`` when set; null = auto, decided by
    :func:`thinksafe.trainers.microbatch.checkpointing_needed` for the largest forward pass (the token
    budget, or max_length, whichever is larger; padded: batch_size × max_length plus full logits)."""
    if tc.gradient_checkpointing is not None:
        return bool(tc.gradient_checkpointing), None
    import torch

    from thinksafe.trainers.microbatch import checkpointing_needed
    micro = micro_batching(tc, packing)
    tokens = max(micro, tc.max_length) if micro else tc.batch_size * tc.max_length
    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = sum(p.numel() * (2 if free is not None else p.element_size()) for p in model.parameters())
    on, why = checkpointing_needed(model.config, tokens, free, trainable, weight_bytes=weights,
                                   logits=not packing)
    return on, f"train.gradient_checkpointing=null (auto): {why}"


def make_trainer(tc, packing: bool, ref_model=None, **kwargs):
    """The trainer for ``train.objective`` × packing (kwargs: SFTTrainer's model, args, train_dataset, ...)."""
    micro = micro_batching(tc, packing)
    if tc.objective == "kl":
        if packing:
            from thinksafe.trainers.packed import PackedKLTrainer
            return PackedKLTrainer(**kwargs, ref_model=ref_model, kl_chunk_size=tc.kl_chunk_size,
                                   micro_batch_tokens=micro)
        from thinksafe.trainers.kl import KLTrainer
        return KLTrainer(**kwargs, ref_model=ref_model, kl_chunk_size=tc.kl_chunk_size)
    if packing:
        from thinksafe.trainers.packed import PackedSFTTrainer
        return PackedSFTTrainer(**kwargs, ce_chunk_size=tc.ce_chunk_size, micro_batch_tokens=micro,
                                lm_head_loss=getattr(tc, "lm_head_loss", "auto"))
    from trl import SFTTrainer
    return SFTTrainer(**kwargs)


def continued_from(cfg) -> str | None:
    """The trained model a round continues (``rounds_from: previous`` with a ``student``: its LoRA
    adapter, or its full model folder), else None (train from ``model.path``)."""
    student = getattr(cfg, "student", None)
    if not student or getattr(cfg, "rounds_from", "base") != "previous":
        return None
    want = "adapter_config.json" if cfg.train.method == "lora" else "config.json"
    if not (Path(student) / want).is_file():
        raise ConfigError(f"rounds_from=previous with train.method={cfg.train.method}: {student} holds no "
                          f"{want} (a LoRA round continues an adapter, a full round a model folder)")
    return student


def packing_summary(trainer, packing: bool, note: str | None) -> dict:
    """``packing`` (+ ``packing_note``); when packed, this session's rows, real tokens per row and the
    padding tokens that right-padding the same micro-batches would have added (all processes)."""
    out: dict = {"packing": packing}
    if note:
        out["packing_note"] = note
    stats = getattr(trainer, "packing_stats", None)
    if packing and stats is not None:
        rows, real, padded = (int(x) for x in stats.tolist())
        out.update({"packed_rows": rows, "real_tokens_per_row": round(real / rows, 1) if rows else None,
                    "padding_tokens_avoided": padded - real,
                    "padding_frac_avoided": round((padded - real) / padded, 4) if padded else None})
        micro = getattr(trainer, "micro_batch_tokens", None)
        if micro:
            steps, parts, tokens, largest = (int(x) for x in trainer.micro_batch_stats.tolist())
            out.update({"micro_batch_tokens": micro, "packed_rows": parts,
                        "real_tokens_per_row": round(tokens / parts, 1) if parts else None,
                        "micro_batches_per_step": round(parts / steps, 2) if steps else None,
                        "tokens_per_micro_batch": round(tokens / parts, 1) if parts else None,
                        "max_tokens_per_micro_batch": largest})
        head = getattr(trainer, "lm_head_backend", None)
        if head:
            out["lm_head_loss"] = head["backend"]
            if head.get("reason"):
                out["lm_head_loss_note"] = head["reason"]
        backend = getattr(trainer, "varlen_backend", None) or {}
        out["varlen_backend"] = backend.get("backend")
        if backend.get("reason"):
            out["varlen_backend_note"] = backend["reason"]
    return out


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    import copy

    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import set_seed

    from thinksafe.backends.hf import causal_lm, load_tokenizer

    tc = cfg.train
    check_train_config(tc)
    check_reporter(tc.report_to)
    if tc.objective == "opsa":                     # on-policy self-distillation: its own loop
        from thinksafe.stages.opsa import run as run_opsa
        return run_opsa(cfg, run_dir, show)
    t0 = time.time()
    rows = read_jsonl(run_dir / INPUT)
    if not rows:
        raise DataError(f"{run_dir / INPUT} is missing or empty; run `thinksafe dataset` first")
    if tc.objective == "kl" and not any("label" in r for r in rows):
        raise DataError(f"train.objective=kl needs a `label` per row of {run_dir / INPUT} "
                        "(harmful rows keep CE, the others learn KL)")
    main = is_main_process()
    show = show and main
    set_seed(cfg.seed)
    path = resolve_model_path(cfg.model.path)
    start = continued_from(cfg)                     # iterative rounds, rounds_from: previous
    tok = load_tokenizer(path)
    tok.padding_side = "right"
    examples, cut_stats = tokenize_rows_stats(tok, rows, family_of(cfg), tc.max_length, tc.truncation)
    if not examples:
        raise DataError(f"train: none of the {len(rows)} examples is usable (over max_length={tc.max_length}: "
                        f"{cut_stats['dropped_too_long']}, response does not survive tokenization: "
                        f"{cut_stats['dropped_untokenizable']})")
    use_bf16 = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not use_bf16:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")   # torchrun on CPUs: DDP over gloo
    model = causal_lm(start if start and tc.method == "full" else path,
                      torch.bfloat16 if use_bf16 else torch.float32)
    packing, packing_note = packing_choice(tc, model.config)
    if not packing and getattr(tc, "micro_batch_tokens", None):
        extra = "train.micro_batch_tokens ignored without packing (batch_size x grad_accum accumulation steps)"
        packing_note = f"{packing_note}; {extra}" if packing_note else extra
    if packing_note and main:
        print(f"[train] {packing_note}", file=sys.stderr, flush=True)
    ref_model = None
    if tc.method == "lora":
        missing = unmatched_targets([n for n, _ in model.named_modules()], tc.lora.target_modules)
        if missing:         # PEFT fails only when no target matches: one typo trains half an adapter
            raise ConfigError(f"train.lora.target_modules: {', '.join(map(repr, missing))} match no module "
                              f"of {cfg.model.path}")
        if start:                                   # continue the previous round's adapter
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, start, is_trainable=True)
        else:
            model = get_peft_model(model, lora_config(tc.lora, model))
    elif tc.objective == "kl":
        ref_model = copy.deepcopy(model)           # full fine-tuning: the reference is a frozen copy
    checkpointing, ckpt_note = checkpointing_choice(tc, model, packing)
    if ckpt_note and main:
        print(f"[train] {ckpt_note}", file=sys.stderr, flush=True)
    columns = ["input_ids", "labels"] + (["is_benign"] if tc.objective == "kl" else [])
    ds = Dataset.from_list([{k: e[k] for k in columns} for e in examples])
    ckpt_dir = run_dir / "checkpoints"
    if tc.report_to == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    args = sft_config(tc, ckpt_dir, cfg.seed, use_bf16, micro_batching(tc, packing), checkpointing)
    kwargs = dict(model=model, args=args, train_dataset=ds,
                  processing_class=tok, callbacks=[progress_callback(show)])
    trainer = make_trainer(tc, packing, ref_model=ref_model, **kwargs)
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)
    resume = any(ckpt_dir.glob("checkpoint-*")) if ckpt_dir.exists() else False
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    out = run_dir / (OUTPUT if tc.method == "lora" else FULL_OUTPUT)
    trainer.save_model(str(out))                   # only the main process writes (and gathers shards)
    world = trainer.args.world_size
    history = [h for h in trainer.state.log_history if "loss" in h]
    n_tokens = sum(sum(1 for x in e["labels"] if x != -100) for e in examples)
    runtime = result.metrics.get("train_runtime") or (time.time() - t0)
    seen = trainer.state.num_input_tokens_seen                      # non-padding tokens, all sessions
    session = seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    summary = {"examples": len(examples), "dropped_too_long": cut_stats["dropped_too_long"],
               "dropped_untokenizable": cut_stats["dropped_untokenizable"],
               "cut_too_long": cut_stats["cut_too_long"], "cut_tokens": cut_stats["cut_tokens"],
               "truncation": tc.truncation, "max_length": tc.max_length,
               "benign_examples": sum(e["is_benign"] for e in examples),
               "response_tokens": n_tokens, "method": tc.method, "objective": tc.objective,
               "epochs": tc.epochs, "steps": trainer.state.global_step, "train_loss": result.training_loss,
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "world_size": world, "input_tokens_seen": seen,
               "tokens_per_second": round(session / runtime, 1) if runtime else None,
               "output": out.name, "resumed": resume, **({"continued_from": start} if start else {}), "seconds": round(time.time() - t0, 1),
               "gradient_checkpointing": checkpointing,
               **({"gradient_checkpointing_note": ckpt_note} if ckpt_note else {}),
               **packing_summary(trainer, packing, packing_note)}
    for key in ("ce", "kl"):
        last = [h[key] for h in history if key in h]
        if last:
            summary[f"final_{key}"] = last[-1]
    if trainer.is_world_process_zero():
        tok.padding_side = "left"
        tok.save_pretrained(str(out))
        write_json(run_dir / "train_summary.json", summary)
        (run_dir / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        if world > 1:
            print(f"[train] rank 0 of {world} wrote {out}", flush=True)
    trainer.accelerator.wait_for_everyone()
    return summary

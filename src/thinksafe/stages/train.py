"""train: SFT on (original prompt, self-generated response), loss on the response only.

The training text is built here, not by a collator: prompt = the chat template's generation prompt
for the ORIGINAL prompt, target = the full response (``<think>`` trace included) + EOS. Labels are
-100 on every prompt token. Examples longer than ``max_length`` are dropped (``truncation: drop``,
the default) or cut to ``max_length`` (``truncation: cut``); both are counted in the summary.

``method``: ``lora`` (PEFT adapter -> ``adapter/``) or ``full`` (whole model -> ``model/``).
``objective``: ``sft`` (cross-entropy), ``kl`` (ThinkSafe+KL, see ``thinksafe.trainers.kl``) or ``opsa``
(on-policy self-distillation on ``sft.jsonl``'s prompts: :func:`run_opsa`, ``thinksafe.trainers.opsa``).
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
from thinksafe.trainers.examples import tokenize_rows_stats
from thinksafe.trainers.opsa_data import build_examples, prompt_rows, sampling_kwargs
from thinksafe.trainers.setup import (
    FULL_OUTPUT,
    OUTPUT,
    check_reporter,
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
    """The stage: SFT / KL on ``sft.jsonl``'s responses, or OPSA on its prompts (``train.objective``)."""
    check_reporter(cfg.train.report_to)
    return (run_opsa if cfg.train.objective == "opsa" else run_sft)(cfg, Path(run_dir), show)


# ----------------------------------------------------------------------------- shared by both objectives
def _tokenizer(cfg):
    """(model path, tokenizer), with the run's seed set."""
    from transformers import set_seed

    from thinksafe.backends.hf import load_tokenizer
    set_seed(cfg.seed)
    path = resolve_model_path(cfg.model.path)
    return path, load_tokenizer(path)


def _model(path: str):
    """(the base model, bf16?): bf16 on CUDA, float32 on CPUs."""
    import torch

    from thinksafe.backends.hf import causal_lm
    use_bf16 = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not use_bf16:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")   # torchrun on CPUs: DDP over gloo
    return causal_lm(path, torch.bfloat16 if use_bf16 else torch.float32), use_bf16


def _train(trainer, tc, run_dir: Path):
    """Train (resuming from the last checkpoint in ``checkpoints/``), save the model to ``adapter/``
    or ``model/``; (train result, output folder, resumed?)."""
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)
    ckpt_dir = run_dir / "checkpoints"
    resume = any(ckpt_dir.glob("checkpoint-*")) if ckpt_dir.exists() else False
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    out = run_dir / (OUTPUT if tc.method == "lora" else FULL_OUTPUT)
    trainer.save_model(str(out))                   # only the main process writes (and gathers shards)
    return result, out, resume


def _finish(trainer, tok, out: Path, run_dir: Path, summary: dict) -> dict:
    """The main process writes the tokenizer, ``train_summary.json`` and ``train_log.jsonl``."""
    if trainer.is_world_process_zero():
        tok.padding_side = "left"
        tok.save_pretrained(str(out))
        write_json(run_dir / "train_summary.json", summary)
        history = [h for h in trainer.state.log_history if "loss" in h]
        (run_dir / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        if trainer.args.world_size > 1:
            print(f"[train] rank 0 of {trainer.args.world_size} wrote {out}", flush=True)
    trainer.accelerator.wait_for_everyone()
    return summary


def _last(trainer, key: str):
    last = [h[key] for h in trainer.state.log_history if "loss" in h and key in h]
    return last[-1] if last else None


def _note(main: bool, note: str | None) -> None:
    if note and main:
        print(f"[train] {note}", file=sys.stderr, flush=True)


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- SFT / KL
def _sft_rows(cfg, run_dir: Path) -> list[dict]:
    rows = read_jsonl(run_dir / INPUT)
    if not rows:
        raise DataError(f"{run_dir / INPUT} is missing or empty; run `thinksafe dataset` first")
    if cfg.train.objective == "kl" and not any("label" in r for r in rows):
        raise DataError(f"train.objective=kl needs a `label` per row of {run_dir / INPUT} "
                        "(harmful rows keep CE, the others learn KL)")
    return rows


def _adapt(cfg, model, start: str | None = None):
    """(the model to train: a PEFT model for LoRA — ``start``'s adapter continued when a round
    continues the previous one —, reference model for full fine-tuning with KL)."""
    import copy

    from peft import get_peft_model
    tc = cfg.train
    if tc.method == "lora":
        missing = unmatched_targets([n for n, _ in model.named_modules()], tc.lora.target_modules)
        if missing:         # PEFT fails only when no target matches: one typo trains half an adapter
            raise ConfigError(f"train.lora.target_modules: {', '.join(map(repr, missing))} match no module "
                              f"of {cfg.model.path}")
        if start:                                   # continue the previous round's adapter
            from peft import PeftModel
            return PeftModel.from_pretrained(model, start, is_trainable=True), None
        return get_peft_model(model, lora_config(tc.lora, model)), None
    return model, (copy.deepcopy(model) if tc.objective == "kl" else None)   # the reference: a frozen copy


def run_sft(cfg, run_dir: Path, show: bool = True) -> dict:
    """``train.objective`` sft or kl: the trainer of ``make_trainer`` on the tokenized rows."""
    from datasets import Dataset
    tc = cfg.train
    t0 = time.time()
    rows = _sft_rows(cfg, run_dir)
    main = is_main_process()
    show = show and main
    path, tok = _tokenizer(cfg)
    start = continued_from(cfg)                     # iterative rounds, rounds_from: previous
    tok.padding_side = "right"
    examples, cut_stats = tokenize_rows_stats(tok, rows, family_of(cfg), tc.max_length, tc.truncation)
    if not examples:
        raise DataError(f"train: none of the {len(rows)} examples is usable (over max_length={tc.max_length}: "
                        f"{cut_stats['dropped_too_long']}, response does not survive tokenization: "
                        f"{cut_stats['dropped_untokenizable']})")
    model, use_bf16 = _model(start if start and tc.method == "full" else path)
    packing, packing_note = packing_choice(tc, model.config)
    if not packing and getattr(tc, "micro_batch_tokens", None):
        extra = "train.micro_batch_tokens ignored without packing (batch_size x grad_accum accumulation steps)"
        packing_note = f"{packing_note}; {extra}" if packing_note else extra
    _note(main, packing_note)
    model, ref_model = _adapt(cfg, model, start)
    checkpointing, ckpt_note = checkpointing_choice(tc, model, packing)
    _note(main, ckpt_note)
    columns = ["input_ids", "labels"] + (["is_benign"] if tc.objective == "kl" else [])
    ds = Dataset.from_list([{k: e[k] for k in columns} for e in examples])
    if tc.report_to == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    args = sft_config(tc, run_dir / "checkpoints", cfg.seed, use_bf16, micro_batching(tc, packing), checkpointing)
    trainer = make_trainer(tc, packing, ref_model=ref_model, model=model, args=args, train_dataset=ds,
                           processing_class=tok, callbacks=[progress_callback(show)])
    result, out, resume = _train(trainer, tc, run_dir)
    summary = {**_sft_summary(trainer, tc, examples, cut_stats, result, t0, model),
               "output": out.name, "resumed": resume, "seconds": round(time.time() - t0, 1),
               **({"continued_from": start} if start else {}),
               "gradient_checkpointing": checkpointing,
               **({"gradient_checkpointing_note": ckpt_note} if ckpt_note else {}),
               **packing_summary(trainer, packing, packing_note)}
    for key in ("ce", "kl"):
        if _last(trainer, key) is not None:
            summary[f"final_{key}"] = _last(trainer, key)
    return _finish(trainer, tok, out, run_dir, summary)


def _sft_summary(trainer, tc, examples: list[dict], cut_stats: dict, result, t0: float, model) -> dict:
    """What was trained on and how much: examples, drops and cuts, steps, tokens, throughput."""
    runtime = result.metrics.get("train_runtime") or (time.time() - t0)
    seen = trainer.state.num_input_tokens_seen                      # non-padding tokens, all sessions
    session = seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return {"examples": len(examples), "dropped_too_long": cut_stats["dropped_too_long"],
            "dropped_untokenizable": cut_stats["dropped_untokenizable"],
            "cut_too_long": cut_stats["cut_too_long"], "cut_tokens": cut_stats["cut_tokens"],
            "truncation": tc.truncation, "max_length": tc.max_length,
            "benign_examples": sum(e["is_benign"] for e in examples),
            "response_tokens": sum(sum(1 for x in e["labels"] if x != -100) for e in examples),
            "method": tc.method, "objective": tc.objective,
            "epochs": tc.epochs, "steps": trainer.state.global_step, "train_loss": result.training_loss,
            "trainable_params": _trainable(model), "world_size": trainer.args.world_size,
            "input_tokens_seen": seen, "tokens_per_second": round(session / runtime, 1) if runtime else None}


# ----------------------------------------------------------------------------- OPSA
def run_opsa(cfg, run_dir: Path, show: bool = True) -> dict:
    """``train.objective: opsa``: on-policy self-distillation (``thinksafe.trainers.opsa``) on the
    distinct prompts of ``sft.jsonl``; lr, epochs, batches, checkpoints and outputs as for SFT."""
    import copy

    from datasets import Dataset
    from peft import get_peft_model

    from thinksafe.trainers.opsa import OPSATrainer, divergence_alpha
    tc, o = cfg.train, cfg.opsa
    t0 = time.time()
    rows = prompt_rows(read_jsonl(run_dir / INPUT))
    if not rows:
        raise DataError(f"{run_dir / INPUT} is missing or has no prompts; run `thinksafe dataset` first "
                        "(train.objective=opsa uses its prompts and labels, not its responses)")
    main = is_main_process()
    show = show and main
    path, tok = _tokenizer(cfg)
    family = family_of(cfg)
    examples, dropped = build_examples(tok, rows, family, o, tc.max_length)
    if not examples:
        raise DataError(f"train (opsa): every one of the {len(rows)} prompts is over max_length={tc.max_length}")
    model, use_bf16 = _model(path)
    ref_model = None                               # LoRA: the teacher is the model with its adapter off
    if tc.method == "lora":
        model = get_peft_model(model, lora_config(tc.lora, model))
    else:
        ref_model = copy.deepcopy(model)           # full fine-tuning: the teacher is a frozen copy
    trainer = OPSATrainer(model=model, args=_opsa_args(cfg, run_dir, use_bf16), train_dataset=Dataset.from_list(examples),
                          processing_class=tok, callbacks=[progress_callback(show)],
                          sampling=sampling_kwargs(cfg, family), alpha=divergence_alpha(o.divergence, o.jsd_alpha),
                          forward_weight=o.forward_weight if o.divergence == "mixed" else None,
                          chunk_size=tc.kl_chunk_size, ref_model=ref_model)
    if main and show:
        benign = f", benign prompts in {o.benign_context!r}" if o.context_on == "harmful" else ""
        print(f"[train] opsa: {len(examples)} prompts, context {o.context!r} on {o.context_on} prompts{benign}, "
              f"divergence {o.divergence}", file=sys.stderr, flush=True)
    result, out, resume = _train(trainer, tc, run_dir)
    summary = {"examples": len(examples), "prompts": len(rows), "dropped_too_long": dropped,
               "harmful_prompts": sum(e["is_harmful"] for e in examples),
               **_opsa_summary(cfg, trainer, model, result, family),
               "output": out.name, "resumed": resume, "seconds": round(time.time() - t0, 1),
               "gradient_checkpointing": tc.gradient_checkpointing is not False, "packing": False}
    if _last(trainer, "opsa_div") is not None:
        summary["final_opsa_div"] = _last(trainer, "opsa_div")
    return _finish(trainer, tok, out, run_dir, summary)


def _opsa_args(cfg, run_dir: Path, use_bf16: bool):
    """Train's TrainingArguments for the OPSA loop (its rows are not the model's forward arguments;
    its tokens are counted from the rollouts)."""
    tc = cfg.train
    checkpointing = tc.gradient_checkpointing is not False
    args = sft_config(tc, run_dir / "checkpoints", cfg.seed, use_bf16, None, checkpointing)
    args.remove_unused_columns = False
    args.include_num_input_tokens_seen = "no"
    if checkpointing:
        args.gradient_checkpointing_kwargs = {"use_reentrant": False}
    if tc.report_to == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    return args


def _opsa_summary(cfg, trainer, model, result, family) -> dict:
    """The session's rollouts, tokens (prompt, completion, teacher prompt) and FLOPs."""
    from thinksafe.compute import model_params
    from thinksafe.trainers.opsa import step_flops
    tc, o, c = cfg.train, cfg.opsa, trainer.counts
    trainable = _trainable(model)
    params = model_params(cfg.model.path)
    return {"method": tc.method, "objective": "opsa", "epochs": tc.epochs, "steps": trainer.state.global_step,
            "train_loss": result.training_loss, "trainable_params": trainable,
            "world_size": trainer.args.world_size,
            "opsa": {"context": o.context, "context_on": o.context_on, "divergence": o.divergence,
                     "benign_context": o.benign_context if o.context_on == "harmful" else None,
                     **({"jsd_alpha": o.jsd_alpha} if o.divergence == "jsd" else {}),
                     **({"forward_weight": o.forward_weight} if o.divergence == "mixed" else {}),
                     "sampling": sampling_kwargs(cfg, family)},
            "rollouts": c["rollouts"], "rollout_prompt_tokens": c["prompt_tokens"],
            "rollout_completion_tokens": c["completion_tokens"], "rollouts_truncated": c["truncated"],
            "teacher_tokens": c["teacher_prompt_tokens"] + c["completion_tokens"],
            "input_tokens_seen": c["prompt_tokens"] + c["completion_tokens"], "response_tokens": c["completion_tokens"],
            "mean_completion_tokens": round(c["completion_tokens"] / c["rollouts"], 1) if c["rollouts"] else None,
            "mean_divergence": c["div_sum"] / c["completion_tokens"] if c["completion_tokens"] else None,
            "flops": step_flops(c, params["flop_params"] if params else None, trainable, tc.method)}

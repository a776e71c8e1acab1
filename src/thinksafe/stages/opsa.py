"""train with ``train.objective: opsa``: on-policy self-distillation (``thinksafe.trainers.opsa``).

The train stage hands over to :func:`run` when the objective is ``opsa``. Prompts: the distinct
prompts of ``sft.jsonl`` with their labels (its responses are not used; ``thinksafe compare``'s
``opsa`` method writes every training prompt there, no generation needed). Each prompt is rendered
twice: as it is (the student's input, the rollouts' prompt) and inside ``opsa.context`` (the
teacher's input) — for harmful prompts only (``opsa.context_on: harmful``, the default: a benign
prompt's teacher is the base itself, which keeps the student near it there) or for all.

Everything else is train's: ``train.method`` (lora / full), lr, epochs, batch_size (prompts per
micro-batch), grad_accum, scheduler, checkpoints every ``save_steps`` (or epoch) and resume, outputs
``adapter/`` or ``model/``, ``train_summary.json`` and ``train_log.jsonl``. The summary counts the
session's rollouts and tokens (prompt, completion, teacher prompt) and its FLOPs
(``thinksafe.trainers.opsa.step_flops``).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

from thinksafe import steering
from thinksafe.errors import ConfigError, DataError
from thinksafe.io import read_jsonl, write_json

INPUT = "sft.jsonl"
CONTEXT_ON = ("harmful", "all")


def check_opsa_config(o) -> None:
    from thinksafe.trainers.opsa import divergence_alpha
    try:
        divergence_alpha(o.divergence, o.jsd_alpha)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if o.context_on not in CONTEXT_ON:
        raise ConfigError(f"opsa.context_on must be one of {', '.join(CONTEXT_ON)}, got {o.context_on!r}")
    if steering.resolve(o.context) is None:
        raise ConfigError("opsa.context must be a privileged context (prefix, suffix, opsa or a template "
                          "with {prompt}), not none: without it the teacher is the student's own start")
    if o.max_new_tokens is not None and o.max_new_tokens < 1:
        raise ConfigError(f"opsa.max_new_tokens must be >= 1, got {o.max_new_tokens}")


def teacher_text(context: str, prompt: str, label: str, context_on: str = "harmful") -> str:
    """The teacher's prompt: ``prompt`` inside the privileged context (harmful prompts only, unless
    ``context_on`` is all)."""
    return steering.apply(context, prompt, "harmful" if context_on == "all" else label)[0]


def prompt_rows(rows: list[dict]) -> list[dict]:
    """Distinct prompts of sft.jsonl, first label wins, in file order."""
    seen: dict[str, str] = {}
    for r in rows:
        if r.get("prompt") and r["prompt"] not in seen:
            seen[r["prompt"]] = r.get("label") or "benign"
    return [{"prompt": p, "label": lab} for p, lab in seen.items()]


def build_examples(tok, rows: list[dict], family, o, max_length: int) -> tuple[list[dict], int]:
    """(examples with prompt_ids / teacher_ids / is_harmful, prompts dropped as too long)."""
    from thinksafe.runtime import render_prompt
    out, dropped = [], 0
    for r in rows:
        p = tok(render_prompt(tok, r["prompt"], family), add_special_tokens=False).input_ids
        t = tok(render_prompt(tok, teacher_text(o.context, r["prompt"], r["label"], o.context_on), family),
                add_special_tokens=False).input_ids
        if max(len(p), len(t)) >= max_length:
            dropped += 1
            continue
        out.append({"prompt_ids": p, "teacher_ids": t, "is_harmful": int(r["label"] == "harmful")})
    return out, dropped


def sampling_kwargs(cfg, family) -> dict:
    o = cfg.opsa
    temperature = family.temperature if o.temperature is None else o.temperature
    top_k = family.top_k if o.top_k is None else o.top_k
    out = {"max_new_tokens": o.max_new_tokens or cfg.generate.max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        out.update(temperature=temperature, top_p=family.top_p if o.top_p is None else o.top_p,
                   top_k=top_k if top_k > 0 else None)
    return out


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from thinksafe.backends.hf import causal_lm, load_tokenizer
    from thinksafe.compute import model_params
    from thinksafe.organism import resolve_model_path
    from thinksafe.runtime import family_of
    from thinksafe.trainers.setup import FULL_OUTPUT, OUTPUT, is_main_process, lora_config, progress_callback, sft_config
    from thinksafe.trainers.opsa import OPSATrainer, divergence_alpha, step_flops

    tc, o = cfg.train, cfg.opsa
    check_opsa_config(o)
    t0 = time.time()
    rows = prompt_rows(read_jsonl(run_dir / INPUT))
    if not rows:
        raise DataError(f"{run_dir / INPUT} is missing or has no prompts; run `thinksafe dataset` first "
                        "(train.objective=opsa uses its prompts and labels, not its responses)")
    main = is_main_process()
    show = show and main
    set_seed(cfg.seed)
    path = resolve_model_path(cfg.model.path)
    tok = load_tokenizer(path)
    family = family_of(cfg)
    examples, dropped = build_examples(tok, rows, family, o, tc.max_length)
    if not examples:
        raise DataError(f"train (opsa): every one of the {len(rows)} prompts is over max_length={tc.max_length}")
    use_bf16 = torch.cuda.is_available()
    model = causal_lm(path, torch.bfloat16 if use_bf16 else torch.float32)
    ref_model = None
    if tc.method == "lora":
        model = get_peft_model(model, lora_config(tc.lora, model))
    else:
        ref_model = copy.deepcopy(model)           # full fine-tuning: the teacher is a frozen copy
    checkpointing = tc.gradient_checkpointing is not False
    args = sft_config(tc, run_dir / "checkpoints", cfg.seed, use_bf16, None, checkpointing)
    args.remove_unused_columns = False              # the rows are not the model's forward arguments
    args.include_num_input_tokens_seen = "no"       # counted here (rollouts), not from input_ids
    if checkpointing:
        args.gradient_checkpointing_kwargs = {"use_reentrant": False}
    if tc.report_to == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    ds = Dataset.from_list(examples)
    trainer = OPSATrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[progress_callback(show)], sampling=sampling_kwargs(cfg, family),
                          alpha=divergence_alpha(o.divergence, o.jsd_alpha), chunk_size=tc.kl_chunk_size,
                          ref_model=ref_model)
    trainer.remove_callback(PrinterCallback)
    ckpt_dir = run_dir / "checkpoints"
    resume = any(ckpt_dir.glob("checkpoint-*")) if ckpt_dir.exists() else False
    if main and show:
        print(f"[train] opsa: {len(examples)} prompts, context {o.context!r} on {o.context_on} prompts, "
              f"divergence {o.divergence}", file=sys.stderr, flush=True)
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    out = run_dir / (OUTPUT if tc.method == "lora" else FULL_OUTPUT)
    trainer.save_model(str(out))
    c = trainer.counts
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = model_params(cfg.model.path)
    flops = step_flops(c, params["flop_params"] if params else None, trainable, tc.method)
    history = [h for h in trainer.state.log_history if "loss" in h]
    student_tokens = c["prompt_tokens"] + c["completion_tokens"]
    summary = {"examples": len(examples), "prompts": len(rows), "dropped_too_long": dropped,
               "harmful_prompts": sum(e["is_harmful"] for e in examples),
               "method": tc.method, "objective": "opsa", "epochs": tc.epochs, "steps": trainer.state.global_step,
               "train_loss": result.training_loss, "trainable_params": trainable,
               "world_size": trainer.args.world_size,
               "opsa": {"context": o.context, "context_on": o.context_on, "divergence": o.divergence,
                        **({"jsd_alpha": o.jsd_alpha} if o.divergence == "jsd" else {}),
                        "sampling": sampling_kwargs(cfg, family)},
               "rollouts": c["rollouts"], "rollout_prompt_tokens": c["prompt_tokens"],
               "rollout_completion_tokens": c["completion_tokens"], "rollouts_truncated": c["truncated"],
               "teacher_tokens": c["teacher_prompt_tokens"] + c["completion_tokens"],
               "input_tokens_seen": student_tokens, "response_tokens": c["completion_tokens"],
               "mean_completion_tokens": round(c["completion_tokens"] / c["rollouts"], 1) if c["rollouts"] else None,
               "mean_divergence": c["div_sum"] / c["completion_tokens"] if c["completion_tokens"] else None,
               "flops": flops, "output": out.name, "resumed": resume, "seconds": round(time.time() - t0, 1),
               "gradient_checkpointing": checkpointing, "packing": False}
    last = [h["opsa_div"] for h in history if "opsa_div" in h]
    if last:
        summary["final_opsa_div"] = last[-1]
    if trainer.is_world_process_zero():
        tok.padding_side = "left"
        tok.save_pretrained(str(out))
        write_json(run_dir / "train_summary.json", summary)
        (run_dir / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    trainer.accelerator.wait_for_everyone()
    return summary

"""train: LoRA SFT on (original prompt, self-generated response), loss on the response only.

The training text is built here, not by a collator: prompt = the chat template's generation prompt
for the ORIGINAL prompt, target = the full response (``<think>`` trace included) + EOS. Labels are
-100 on every prompt token. Examples longer than ``max_length`` are dropped and counted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from thinksafe.errors import DataError, TemplateError
from thinksafe.families import Family
from thinksafe.io import read_jsonl, write_json
from thinksafe.organism import resolve_model_path
from thinksafe.runtime import family_of, render_prompt

INPUT, OUTPUT = "sft.jsonl", "adapter"


def tokenize_example(tokenizer, prompt: str, response: str, family: Family) -> dict:
    """input_ids + labels for one example; fails loudly if the response does not survive."""
    prompt_text = render_prompt(tokenizer, prompt, family)
    target = response
    if family.prefill and prompt_text.endswith(family.prefill) and target.startswith(family.prefill):
        target = target[len(family.prefill):]   # the generation prompt already holds it
    p_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    r_ids = tokenizer(target, add_special_tokens=False).input_ids
    if tokenizer.decode(r_ids) != target:
        raise TemplateError("the response does not survive tokenization unchanged: "
                            f"{target[:60]!r}...")
    if "</think>" in response and "</think>" not in tokenizer.decode(p_ids + r_ids):
        raise TemplateError("the rendered training text lost the reasoning trace")
    r_ids = r_ids + [tokenizer.eos_token_id]
    return {"input_ids": p_ids + r_ids, "labels": [-100] * len(p_ids) + r_ids}


def tokenize_rows(tokenizer, rows: list[dict], family: Family, max_length: int) -> tuple[list[dict], int]:
    out, dropped = [], 0
    for row in rows:
        ex = tokenize_example(tokenizer, row["prompt"], row["response"], family)
        if len(ex["input_ids"]) > max_length:
            dropped += 1
            continue
        ex["is_benign"] = int(row.get("label") != "harmful")
        out.append(ex)
    return out, dropped


def lora_config(lc):
    from peft import LoraConfig
    targets = lc.target_modules
    if targets in (["all-linear"], "all-linear"):
        targets = "all-linear"
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                      task_type="CAUSAL_LM")


def sft_config(tc, out_dir: Path, seed: int, use_bf16: bool):
    from trl import SFTConfig
    return SFTConfig(output_dir=str(out_dir), learning_rate=tc.lr, num_train_epochs=tc.epochs,
                     per_device_train_batch_size=tc.batch_size,
                     gradient_accumulation_steps=tc.grad_accum, lr_scheduler_type=tc.scheduler,
                     warmup_steps=tc.warmup_ratio, max_grad_norm=tc.max_grad_norm, max_length=None,
                     logging_steps=tc.logging_steps, save_strategy="epoch", save_total_limit=1,
                     report_to="none", seed=seed, data_seed=seed, bf16=use_bf16,
                     completion_only_loss=True, packing=False, disable_tqdm=True,
                     remove_unused_columns=True, dataloader_num_workers=0,
                     dataloader_pin_memory=use_bf16)


def progress_callback(show: bool):
    """A TrainerCallback that drives one rich progress bar (instead of tqdm + printed log dicts)."""
    from transformers import TrainerCallback

    from thinksafe.runtime import progress_bar

    class _Bar(TrainerCallback):
        def __init__(self):
            self.ctx = self.advance = None

        def on_train_begin(self, args, state, control, **kw):
            self.ctx = progress_bar("train", state.max_steps, show)
            self.advance = self.ctx.__enter__()
            self.advance(state.global_step)

        def on_step_end(self, args, state, control, **kw):
            self.advance(1)

        def on_train_end(self, args, state, control, **kw):
            self.ctx.__exit__(None, None, None)

    return _Bar()


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from thinksafe.backends.hf import load_tokenizer

    t0 = time.time()
    rows = read_jsonl(run_dir / INPUT)
    if not rows:
        raise DataError(f"{run_dir / INPUT} is missing or empty; run `thinksafe dataset` first")
    torch.manual_seed(cfg.seed)
    path = resolve_model_path(cfg.model.path)
    tok = load_tokenizer(path)
    tok.padding_side = "right"
    examples, dropped = tokenize_rows(tok, rows, family_of(cfg), cfg.train.max_length)
    if not examples:
        raise DataError(f"train: all {len(rows)} examples exceed max_length={cfg.train.max_length}")
    use_bf16 = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if use_bf16 else torch.float32, use_safetensors=True)
    model = get_peft_model(model, lora_config(cfg.train.lora))
    ds = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    ckpt_dir = run_dir / "checkpoints"
    trainer = SFTTrainer(model=model, args=sft_config(cfg.train, ckpt_dir, cfg.seed, use_bf16),
                         train_dataset=ds, processing_class=tok, callbacks=[progress_callback(show)])
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)
    resume = any(ckpt_dir.glob("checkpoint-*")) if ckpt_dir.exists() else False
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    out = run_dir / OUTPUT
    trainer.model.save_pretrained(str(out))
    tok.padding_side = "left"
    tok.save_pretrained(str(out))
    history = [h for h in trainer.state.log_history if "loss" in h]
    n_tokens = sum(sum(1 for x in e["labels"] if x != -100) for e in examples)
    summary = {"examples": len(examples), "dropped_too_long": dropped, "max_length": cfg.train.max_length,
               "response_tokens": n_tokens, "epochs": cfg.train.epochs,
               "steps": trainer.state.global_step, "train_loss": result.training_loss,
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "resumed": resume, "seconds": round(time.time() - t0, 1)}
    write_json(run_dir / "train_summary.json", summary)
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return summary

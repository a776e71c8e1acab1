"""train: SFT on (original prompt, self-generated response), loss on the response only.

The training text is built here, not by a collator: prompt = the chat template's generation prompt
for the ORIGINAL prompt, target = the full response (``<think>`` trace included) + EOS. Labels are
-100 on every prompt token. Examples longer than ``max_length`` are dropped (``truncation: drop``,
the default) or cut to ``max_length`` (``truncation: cut``); both are counted in the summary.

``method``: ``lora`` (PEFT adapter -> ``adapter/``) or ``full`` (whole model -> ``model/``).
``objective``: ``sft`` (cross-entropy) or ``kl`` (ThinkSafe+KL, see ``thinksafe.trainers.kl``).
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

from thinksafe.errors import ConfigError, DataError, MissingDependency, TemplateError
from thinksafe.families import Family
from thinksafe.io import read_jsonl, write_json
from thinksafe.organism import resolve_model_path
from thinksafe.runtime import family_of, render_prompt

INPUT, OUTPUT, FULL_OUTPUT = "sft.jsonl", "adapter", "model"
METHODS, OBJECTIVES, TRUNCATIONS, REPORTERS = ("lora", "full"), ("sft", "kl"), ("drop", "cut"), \
    ("none", "wandb", "tensorboard")


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


def tokenize_many(tokenizer, rows: list[dict], family: Family, prompt_field: str = "prompt",
                  response_field: str = "response", block: int = 256):
    """:func:`tokenize_example` for many rows, fast: each prompt is rendered once (samples of one
    prompt share it), prompts and responses are tokenized in batched tokenizer calls and the
    round-trip check decodes each response once, also batched. Yields ``(index, example)`` or
    ``(index, reason)`` (a str) for a row whose response does not survive tokenization."""
    rendered: dict[str, str] = {}
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        prompts, targets = [], []
        for r in part:
            p = r[prompt_field]
            text = rendered.get(p)
            if text is None:
                text = rendered[p] = render_prompt(tokenizer, p, family)
            target = r[response_field]
            if family.prefill and text.endswith(family.prefill) and target.startswith(family.prefill):
                target = target[len(family.prefill):]   # the generation prompt already holds it
            prompts.append(text)
            targets.append(target)
        p_ids = tokenizer(prompts, add_special_tokens=False).input_ids
        r_ids = tokenizer(targets, add_special_tokens=False).input_ids
        back = tokenizer.batch_decode(r_ids)
        for j, r in enumerate(part):
            if back[j] != targets[j]:
                yield start + j, f"the response does not survive tokenization unchanged: {targets[j][:60]!r}..."
            elif "</think>" in r[response_field] and "</think>" not in prompts[j] + back[j]:
                yield start + j, "the rendered training text lost the reasoning trace"
            else:
                ids = r_ids[j] + [tokenizer.eos_token_id]
                yield start + j, {"input_ids": p_ids[j] + ids, "labels": [-100] * len(p_ids[j]) + ids}


def tokenize_rows_stats(tokenizer, rows: list[dict], family: Family, max_length: int,
                        truncation: str = "drop") -> tuple[list[dict], dict]:
    """Tokenized examples (input_ids, labels, is_benign) and what happened to the long ones.

    ``drop``: an example over ``max_length`` is left out. ``cut``: it keeps its first ``max_length``
    tokens (it loses the end of its response, EOS included); one whose prompt alone fills
    ``max_length`` has nothing left to learn and is dropped. An example whose response does not
    survive tokenization unchanged is dropped too (``dropped_untokenizable``, first reason in
    ``untokenizable_example``). Every case is counted."""
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"train.truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
    out = []
    stats = {"truncation": truncation, "dropped_too_long": 0, "cut_too_long": 0, "cut_tokens": 0,
             "dropped_untokenizable": 0}
    for i, ex in tokenize_many(tokenizer, rows, family):
        if isinstance(ex, str):
            stats["dropped_untokenizable"] += 1
            stats.setdefault("untokenizable_example", f"row {i + 1}: {ex}")
            continue
        n = len(ex["input_ids"])
        if n > max_length:
            if truncation == "drop" or all(x == -100 for x in ex["labels"][1:max_length]):
                stats["dropped_too_long"] += 1
                continue
            ex = {"input_ids": ex["input_ids"][:max_length], "labels": ex["labels"][:max_length]}
            stats["cut_too_long"] += 1
            stats["cut_tokens"] += n - max_length
        ex["is_benign"] = int(rows[i].get("label") != "harmful")
        out.append(ex)
    return out, stats


def tokenize_rows(tokenizer, rows: list[dict], family: Family, max_length: int,
                  truncation: str = "drop") -> tuple[list[dict], int]:
    out, stats = tokenize_rows_stats(tokenizer, rows, family, max_length, truncation)
    return out, stats["dropped_too_long"]


def layer_range(lc, num_layers: int | None = None) -> list[int] | None:
    """``train.lora.layers: [start, end]`` -> the decoder layer indices start..end-1 (end excluded)."""
    if lc.layers is None:
        return None
    v = lc.layers
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
        raise ConfigError(f"train.lora.layers must be [start, end] (two integers, end excluded), got {v!r}")
    start, end = v
    top = num_layers if num_layers is not None else end
    if not 0 <= start < end <= top:
        limit = f" and end <= {num_layers} (the model's layers)" if num_layers is not None else ""
        raise ConfigError(f"train.lora.layers: need 0 <= start < end{limit}, got {v!r}")
    return list(range(start, end))


def linear_module_names(model) -> list[str]:
    """What PEFT's "all-linear" selects: every Linear leaf name except the output head."""
    import torch
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and mod is not head
             and ".lora_" not in name and not name.endswith("base_layer")}   # not PEFT's own layers
    return sorted(names)


def unmatched_targets(module_names, targets) -> list[str]:
    """The LoRA target names that match no module (PEFT's rule: the full name, or its ending
    after a dot). PEFT itself only fails when none matches; one typo trains half an adapter."""
    if isinstance(targets, str):
        return []                  # "all-linear" or a regular expression: PEFT's own check
    names = list(module_names)
    return [t for t in targets if t != "all-linear" and
            not any(n == t or n.endswith("." + t) for n in names)]


def lora_config(lc, model=None):
    """train.lora -> peft.LoraConfig (r, alpha, dropout, target modules, optional layer range)."""
    from peft import LoraConfig
    targets = lc.target_modules
    if targets in (["all-linear"], "all-linear"):
        targets = "all-linear"
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    layers = layer_range(lc, num_layers)
    extra = {}
    if layers is not None:
        if targets == "all-linear":
            if model is None:
                raise ConfigError("train.lora.layers with target_modules all-linear needs the model")
            targets = linear_module_names(model)   # PEFT takes a layer range only with named targets
        extra["layers_to_transform"] = layers
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", **extra)


def check_train_config(tc) -> None:
    for key, value, allowed in (("method", tc.method, METHODS), ("objective", tc.objective, OBJECTIVES),
                                ("truncation", tc.truncation, TRUNCATIONS), ("report_to", tc.report_to, REPORTERS)):
        if value not in allowed:
            raise ConfigError(f"train.{key} must be one of {', '.join(allowed)}, got {value!r}")
    for key in ("kl_chunk_size", "ce_chunk_size"):
        if getattr(tc, key) is not None and getattr(tc, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1 (or null = by memory), got {getattr(tc, key)}")
    from thinksafe.trainers.kernels import LM_HEAD_LOSSES
    if getattr(tc, "lm_head_loss", "auto") not in LM_HEAD_LOSSES:
        raise ConfigError(f"train.lm_head_loss must be one of {', '.join(LM_HEAD_LOSSES)}, got {tc.lm_head_loss!r}")
    if getattr(tc, "micro_batch_tokens", None) is not None and tc.micro_batch_tokens < 1:
        raise ConfigError(f"train.micro_batch_tokens must be >= 1 (or null = off), got {tc.micro_batch_tokens}")
    if not isinstance(tc.save_steps, int) or isinstance(tc.save_steps, bool) or tc.save_steps < 0:
        raise ConfigError(f"train.save_steps must be an integer >= 0 (0 = once per epoch), got {tc.save_steps!r}")
    if tc.method == "lora":
        layer_range(tc.lora)


def check_reporter(report_to: str) -> None:
    """The logging integration must be installed before training starts (imported only when chosen)."""
    import importlib.util
    need = {"wandb": (["wandb"], "pip install wandb"),
            "tensorboard": (["tensorboard", "tensorboardX"], "pip install tensorboard")}.get(report_to)
    if need and not any(importlib.util.find_spec(m) for m in need[0]):
        raise MissingDependency(f"train.report_to={report_to} needs {need[0][0]}: {need[1]}")


def sft_config(tc, out_dir: Path, seed: int, use_bf16: bool, micro_batch_tokens: int | None = None,
               checkpointing: bool | None = None):
    """TRL's SFTConfig for ``train``. ``micro_batch_tokens``: the Trainer draws each step's
    batch_size × grad_accum examples as one batch (one accumulation step) and the packed trainer cuts
    it by tokens; ``checkpointing``: decided gradient checkpointing (None: ``train.gradient_checkpointing``)."""
    import dataclasses

    from trl import SFTConfig
    extra = {}
    if checkpointing is None:
        checkpointing = getattr(tc, "gradient_checkpointing", True) is not False
    if not checkpointing:                                        # TRL's SFTConfig turns it on by default
        names = {f.name for f in dataclasses.fields(SFTConfig)}
        extra["gradient_checkpointing"] = False
        if "activation_checkpointing" in names:                 # the new name (transformers >= 5.x)
            extra["activation_checkpointing"] = False
    if getattr(tc, "group_by_length", False):
        extra["train_sampling_strategy"] = "group_by_length"
    per_device, accum = tc.batch_size, tc.grad_accum
    if micro_batch_tokens:
        per_device, accum = tc.batch_size * tc.grad_accum, 1
    save_steps = getattr(tc, "save_steps", 0) or 0
    if save_steps:
        extra.update(save_strategy="steps", save_steps=save_steps)
    else:
        extra["save_strategy"] = "epoch"
    return SFTConfig(output_dir=str(out_dir), learning_rate=tc.lr, num_train_epochs=tc.epochs,
                     per_device_train_batch_size=per_device,
                     gradient_accumulation_steps=accum, lr_scheduler_type=tc.scheduler,
                     warmup_steps=tc.warmup_ratio, max_grad_norm=tc.max_grad_norm, max_length=None,
                     logging_steps=tc.logging_steps, save_total_limit=1,
                     report_to=getattr(tc, "report_to", "none"), seed=seed, data_seed=seed, bf16=use_bf16,
                     completion_only_loss=True, packing=False, disable_tqdm=True,
                     remove_unused_columns=True, dataloader_num_workers=0,
                     dataloader_pin_memory=use_bf16, include_num_input_tokens_seen="non_padding", **extra)


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


def is_main_process() -> bool:
    """Rank 0 of a launch by accelerate / torchrun (or a plain single process)."""
    return int(os.environ.get("RANK", "0")) == 0


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
    model = causal_lm(path, torch.bfloat16 if use_bf16 else torch.float32)
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
               "output": out.name, "resumed": resume, "seconds": round(time.time() - t0, 1),
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

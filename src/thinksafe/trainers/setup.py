"""What every training stage (``train``, ``opsa``, ``grpo``) sets up the same way: output names, the
LoRA config, TRL's SFTConfig, the progress bar and the main process.
Nothing here imports a stage."""

from __future__ import annotations

import os
from pathlib import Path

from thinksafe.errors import ConfigError, MissingDependency
from thinksafe.validation import layer_range

OUTPUT, FULL_OUTPUT = "adapter", "model"


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

"""merge: fold a trained LoRA adapter into its base model -> one standalone model folder.

``thinksafe merge RUN_DIR_OR_ADAPTER --to DIR`` writes DIR with the merged weights in safetensors,
config, generation config and the tokenizer (the adapter folder's copy, else the base's): a folder
that vLLM, lm-eval or ``AutoModelForCausalLM.from_pretrained`` load without PEFT (the paper merges
before evaluating). The base is, in order: ``--base``, the run folder's ``config.yaml``
(``model.path``), the adapter's ``base_model_name_or_path``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from thinksafe.errors import ConfigError, DataError
from thinksafe.io import write_json
from thinksafe.organism import resolve_model_path

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def find_adapter(path: str | Path) -> tuple[Path, Path | None]:
    """(adapter folder, run folder or None) for a run folder or an adapter folder."""
    p = Path(path)
    if (p / ADAPTER_CONFIG).is_file():
        run_dir = p.parent if (p.parent / "config.yaml").is_file() else None
        return p, run_dir
    if (p / "adapter" / ADAPTER_CONFIG).is_file():
        return p / "adapter", p
    if (p / "model" / "config.json").is_file():
        raise DataError(f"{p} holds a fully fine-tuned model ({p / 'model'}); there is nothing to merge")
    raise DataError(f"no LoRA adapter at {p} (expected {p / ADAPTER_CONFIG} or {p / 'adapter' / ADAPTER_CONFIG}); "
                    "run `thinksafe train` first")


def base_model_of(adapter: Path, run_dir: Path | None, base: str | None = None) -> str:
    if base:
        return resolve_model_path(base)
    if run_dir is not None:
        from thinksafe.config import load_config
        try:
            return resolve_model_path(load_config(run_dir / "config.yaml").model.path)
        except ConfigError:
            pass                                   # a config of another thinksafe version: use the adapter's
    recorded = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not recorded:
        raise ConfigError(f"{adapter / ADAPTER_CONFIG} does not name its base model; pass --base")
    return resolve_model_path(recorded)


def merge(path: str | Path, out: str | Path, base: str | None = None, dtype: str = "auto",
          overwrite: bool = False) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from thinksafe.backends.hf import causal_lm

    t0 = time.time()
    adapter, run_dir = find_adapter(path)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another --to or pass --overwrite")
    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ConfigError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    base_path = base_model_of(adapter, run_dir, base)
    model = causal_lm(base_path, "auto" if dtype == "auto" else getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, str(adapter))
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))               # safetensors (transformers 5 writes nothing else)
    tok_src = adapter if any((adapter / f).is_file() for f in TOKENIZER_FILES) else Path(base_path)
    tok = AutoTokenizer.from_pretrained(str(tok_src))
    tok.save_pretrained(str(out))
    summary = {"adapter": str(adapter), "base": str(base_path), "out": str(out),
               "params": sum(p.numel() for p in merged.parameters()),
               "dtype": str(next(merged.parameters()).dtype).replace("torch.", ""),
               "seconds": round(time.time() - t0, 1)}
    write_json(out / "merge_info.json", summary)
    return summary

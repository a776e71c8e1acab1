"""Python's garbage and CUDA's cached memory, collected: the last step of ``runtime.release`` (the one
way to free a model, guard or backend) and of a vLLM engine's own close."""

from __future__ import annotations


def release_memory() -> None:
    """Collect garbage and hand cached CUDA memory back, after an engine or model was dropped."""
    import gc
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass

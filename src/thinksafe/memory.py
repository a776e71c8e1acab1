"""The one way to free a model's memory once it is dropped (engines, models, guards)."""

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

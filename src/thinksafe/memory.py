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


HEAP_MMAP_THRESHOLD = 1 << 20   # bytes: allocations from 1 MiB up get their own mapping


def fix_heap_threshold(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (on a CPU, for long OPSA rollouts). glibc raises the threshold
    adaptively up to 32 MiB; vocabulary-sized chunk buffers just under it (55 rows x 151,936 x 4 bytes)
    are then served from the heap and freed ones are kept, so RSS grows with the rollout although no
    tensor outlives its chunk (docs/opsa.md). A fixed threshold gives each such buffer its own mapping,
    returned when freed. Leaves a threshold the user set (``MALLOC_MMAP_THRESHOLD_``) alone.
    True when the threshold is now fixed (by this call or the user); False off glibc."""
    import os
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))      # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False

"""thinksafe.memory: glibc's heap threshold, fixed so freed vocabulary-sized buffers leave RSS."""

import os
import subprocess
import sys

from conftest import ROOT

PROBE = """
import sys, torch
from thinksafe.memory import fix_heap_threshold
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
if sys.argv[1] == "fix":
    assert fix_heap_threshold()
n = (31 << 20) // 4                   # one OPSA divergence chunk: just under glibc's 32 MiB cap
x = torch.ones(n); del x              # a freed mapping raises glibc's adaptive threshold to its size
keep, r0 = [], rss()
for _ in range(8):
    a = torch.ones(n)
    keep.append(torch.ones(16))       # a small block after it pins the heap's top
    del a
print(rss() - r0)
"""


def _growth(mode: str) -> float:
    # a clean environment: nothing another test or the caller set reaches the allocator
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                         check=True)
    return float(out.stdout.split()[-1])


def test_fixed_threshold_returns_freed_chunks():
    grown, fixed = _growth("default"), _growth("fix")
    assert fixed < 31, (grown, fixed)           # fixed: every freed 31 MiB buffer went back to the system
    assert grown > fixed + 31, (grown, fixed)   # the trap: without it the heap kept freed buffers


def test_a_threshold_the_user_set_is_left_alone(monkeypatch):
    import ctypes

    from thinksafe.memory import fix_heap_threshold

    def no_libc(*a, **k):
        raise AssertionError("mallopt called over the user's MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    assert fix_heap_threshold() is True

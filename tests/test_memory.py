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
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                         check=True)
    return float(out.stdout.split()[-1])


def test_fixed_threshold_returns_freed_chunks():
    grown = _growth("default")
    assert grown > 100, grown           # the trap: 8 freed 31 MiB buffers kept by the heap
    assert _growth("fix") < 31, grown   # fixed: each freed buffer went back to the system


def test_a_threshold_the_user_set_is_left_alone(monkeypatch):
    import ctypes

    from thinksafe.memory import fix_heap_threshold

    def no_libc(*a, **k):
        raise AssertionError("mallopt called over the user's MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    assert fix_heap_threshold() is True

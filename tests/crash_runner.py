"""Runs the thinksafe CLI with its JSONL appends instrumented (used by test_crash_safety.py, not collected).

THINKSAFE_CRASH_AT=K: the K-th append writes half of its bytes (a torn line), then the process SIGKILLs itself,
inside the write path. THINKSAFE_APPEND_LOG=FILE: every append adds its row count to FILE (one line each).
"""

import os
import signal
import sys

import thinksafe.generation
import thinksafe.io
import thinksafe.judging
from thinksafe.cli import main

_real = thinksafe.io.append_jsonl
_calls = [0]


def append_jsonl(path, rows):
    rows = list(rows)
    _calls[0] += 1
    if _calls[0] == int(os.environ.get("THINKSAFE_CRASH_AT", "0")):
        data = "".join(thinksafe.io.json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        with open(path, "ab") as f:
            f.write(data[: max(1, len(data) // 2)])      # torn: no newline at the end of what is there
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    _real(path, rows)
    log = os.environ.get("THINKSAFE_APPEND_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{len(rows)}\n")


for mod in (thinksafe.io, thinksafe.generation, thinksafe.judging):
    mod.append_jsonl = append_jsonl

if __name__ == "__main__":
    sys.argv = ["thinksafe", *sys.argv[1:]]
    sys.exit(main())

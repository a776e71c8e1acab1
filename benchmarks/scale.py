"""Paper scale, rehearsed on CPU: every stage at 1k-40k records, the real 151,936-token Qwen3
vocabulary and responses with the paper's length distribution (mean ~0.8k tokens, tail to 16k).

Inputs are regenerated deterministically under ``--work`` (seed 0): a random-initialised 2-layer
Qwen3 (hidden 64) with the REAL Qwen3 tokenizer as policy; a random 2-layer Llama guard behind the
real Llama-Guard-3 chat template (Qwen3's tokenizer, so its vocabulary is 151,936 > Llama-Guard-3's
128,256); a SafeChain-shaped prompt file (``instruction``/``label``, 1 % real HarmBench prompts for
decontamination to find) and a ``generated.jsonl``.

Each (stage, size) runs in its own subprocess, so peak RSS is that stage's (``ru_maxrss``; the
process's RSS after imports is printed too). Stages that run a model forward over every record
(the guard's and perplexity's) are measured as PROBES: the bookkeeping runs at every size with
the model replaced by a stub, and the model itself on single 16k-token inputs and a small batch,
whose tokens/s give the extrapolated time at each size (marked "extrapolated"). ``before`` rows run
the code path each fix replaced, in the same run. The largest single allocation is torch's
profiler's largest op allocation (model stages) or tracemalloc's largest allocation site at peak
(``--trace``, Python stages).

    python benchmarks/scale.py                          # 1k 4k 16k 40k on CPU, prints the table
    python benchmarks/scale.py --sizes 1000 4000 --json rows.json
    python benchmarks/scale.py --tiny --inprocess       # seconds (the CI test)
    python benchmarks/scale.py --device cuda --shape paper   # GPU: Qwen3-0.6B / Llama-Guard-3-8B shapes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale_inputs import DATA, prepare  # noqa: E402
from scale_stages import HAS_BEFORE, PROBES, STAGES, restore  # noqa: E402


def rss_mib() -> float:
    """Peak RSS of this process since the last :func:`reset_peak` (Linux VmHWM), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start the peak-RSS count afresh (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def preload() -> None:
    """Import what the stages use, so that neither their time nor their peak RSS holds imports."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import thinksafe.backends.hf  # noqa: F401
    import thinksafe.guards.llama_guard  # noqa: F401
    import thinksafe.stages.dataset  # noqa: F401
    import thinksafe.stages.evaluate  # noqa: F401
    import thinksafe.stages.generate  # noqa: F401
    import thinksafe.stages.judge  # noqa: F401
    import thinksafe.stages.perplexity  # noqa: F401
    import thinksafe.stages.report  # noqa: F401
    import thinksafe.stages.train  # noqa: F401


def run_child(args, stage: str, size: int, before: bool) -> dict:
    """One measurement in a fresh interpreter (its own peak RSS); in-process with --inprocess."""
    spec = {"stage": stage, "size": size, "before": before, "work": str(args.work), "device": args.device,
            "shape": args.shape, "probe_tokens": args.probe_tokens, "trace": args.trace,
            "train_sets": args.train_set}
    if args.inprocess:
        return measure(spec)
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS":
                                                                 os.environ.get("OMP_NUM_THREADS", "2")})
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return {"stage": stage, "size": size, "before": before, "error": tail[0][:200]}
    return json.loads(lines[-1])


def measure(spec: dict) -> dict:
    """Run one stage (imports first, so the stage's own time and memory stand out)."""
    import tracemalloc

    fn = {**STAGES, **PROBES}[spec["stage"]]
    preload()
    reset_peak()
    base_rss = rss_mib()
    if spec.get("trace"):
        tracemalloc.start(1)
    t0 = time.perf_counter()
    try:
        extra = fn(spec) or {}
    finally:
        restore()
    secs = time.perf_counter() - t0
    if spec.get("trace") and "largest_alloc" not in extra:
        snap = tracemalloc.take_snapshot()
        top = snap.statistics("lineno")[:1]
        if top:
            f = top[0].traceback[0]
            extra["largest_alloc"] = f"{top[0].size / 2**20:.0f} MiB at {Path(f.filename).name}:{f.lineno}"
        tracemalloc.stop()
    n = extra.pop("records", spec["size"])
    return {"stage": spec["stage"], "size": spec["size"], "before": spec["before"], "seconds": round(secs, 3),
            "records": n, "ms_per_record": round(1000 * secs / n, 4) if n else None,
            "peak_rss_mib": round(rss_mib(), 1), "start_rss_mib": round(base_rss, 1), **extra}


def fmt_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['stage']} | {r['size']:,} | {'before' if r['before'] else 'after'} | error: {r['error']} |||||"
    mode = "before" if r["before"] else "after"
    ext = r.get("extrapolated_seconds")
    note = r.get("note", "")
    if ext is not None:
        note = (note + "; " if note else "") + f"extrapolated {ext:,.0f} s at this size"
    return (f"| {r['stage']} | {r['size']:,} | {mode} | {r['seconds']:.2f} | {r['ms_per_record'] or 0:.3f} | "
            f"{r['peak_rss_mib']:,.0f} | {r.get('largest_alloc', '-')} | {note} |")


HEADER = ("| stage | size | code | wall s | ms/record | peak RSS MiB | largest allocation | notes |\n"
          "|---|---:|---|---:|---:|---:|---|---|")


def targets(results: list[dict], sizes: list[int]) -> list[str]:
    """The issue's targets, checked against the measured rows."""
    out = []
    after = [r for r in results if not r["before"] and "error" not in r]
    for stage in STAGES:
        rows = sorted((r for r in after if r["stage"] == stage), key=lambda r: r["size"])
        if len(rows) >= 2 and rows[0]["ms_per_record"]:
            g = rows[-1]["ms_per_record"] / rows[0]["ms_per_record"]
            out.append(f"- {stage}: time/record x{g:.2f} from {rows[0]['size']:,} to {rows[-1]['size']:,} "
                       f"({'ok' if g <= 1.5 else 'OVER'} <= 1.5)")
    for r in after:
        if r["stage"] in PROBES and r.get("tokens_max"):
            ok = r["peak_rss_mib"] < 2048
            out.append(f"- {r['stage']}: peak RSS {r['peak_rss_mib']:,.0f} MiB with a {r['tokens_max']:,}-token "
                       f"input ({'ok' if ok else 'OVER'} < 2 GiB)")
    probe = next((r for r in after if r["stage"] == "guard_probe" and r.get("tokens_per_s")), None)
    for r in after:
        if r["stage"] == "judge" and probe and r.get("guard_tokens"):
            out.append(f"- judge at {r['size']:,}: + the guard's forward, extrapolated: "
                       f"{r['guard_tokens'] / probe['tokens_per_s']:,.0f} s ({r['guard_tokens']:,} tokens at the "
                       f"probe's {probe['tokens_per_s']:,.0f} tokens/s on {probe['tokens_max']:,}-token inputs)")
    big = max(sizes)
    rehearsal = [r for r in after if r["size"] == big and r["stage"] in ("judge", "dataset", "tokenize")]
    if len(rehearsal) == 3:
        out.append(f"- judge + dataset + tokenization at {big:,} records: "
                   f"{sum(r['seconds'] for r in rehearsal):,.0f} s on {os.cpu_count()} cores "
                   "(judge without the guard's forward; see the guard probe)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 40000])
    ap.add_argument("--before-sizes", type=int, nargs="*", default=None,
                    help="sizes at which the old code paths run too (default: the two smallest)")
    ap.add_argument("--stages", nargs="*", default=None, help=f"subset of {', '.join({**STAGES, **PROBES})}")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "thinksafe-scale")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="tiny", choices=["tiny", "paper"],
                    help="tiny: 2 layers, hidden 64 (CPU); paper: Qwen3-0.6B policy, Llama-Guard-3-8B guard (GPU)")
    ap.add_argument("--probe-tokens", type=int, default=16000, help="response tokens of the long probe inputs")
    ap.add_argument("--tiny", action="store_true", help="sizes 20 40, short responses (the CI test)")
    ap.add_argument("--inprocess", action="store_true", help="no subprocesses (peak RSS is then cumulative)")
    ap.add_argument("--trace", action="store_true", help="tracemalloc in Python stages (slower)")
    ap.add_argument("--train-set", nargs="*", default=[], help="extra --set items for the train probe, "
                    "e.g. train.ce_chunk_size=512")
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return 0
    if not (DATA / "tokenizers" / "qwen3").is_dir():
        print(f"scale: the Qwen3 tokenizer is not at {DATA / 'tokenizers' / 'qwen3'} (set THINKSAFE_DATA)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("THINKSAFE_DATA", str(DATA))      # the evaluation files decontamination reads
    if args.tiny:
        args.sizes, args.probe_tokens = [20, 40], 300
    before_sizes = sorted(args.sizes)[:2] if args.before_sizes is None else args.before_sizes
    t0 = time.time()
    info = prepare(args.work, max(args.sizes), args.sizes, tiny=args.tiny, shape=args.shape)
    print(f"inputs: {info} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    chosen = args.stages or list(STAGES) + list(PROBES)
    results = []
    print(HEADER, flush=True)
    for stage in chosen:
        sizes = args.sizes if stage in STAGES else [max(args.sizes)]
        for size in sorted(sizes):
            old = stage in HAS_BEFORE and size in before_sizes or stage in ("guard_probe", "perplexity_probe")
            for before in ([False, True] if old else [False]):
                r = run_child(args, stage, size, before)
                results.append(r)
                print(fmt_row(r), flush=True)
    print("\nTargets:\n" + "\n".join(targets(results, args.sizes)), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"inputs": info, "rows": results}, indent=1))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

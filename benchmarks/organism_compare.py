"""The paper's comparisons reproduced on the organism: every method of
``configs/compare-organism.yaml`` over several world seeds, mean ± sd, written into BENCHMARKS.md.

    PYTHONPATH=src python benchmarks/organism_compare.py            # 5 seeds, ~45 min on 2 quiet cores
    PYTHONPATH=src python benchmarks/organism_compare.py --seeds 0 --no-write

Each seed is one ``thinksafe compare`` run (``runs/organism-compare/seed-N``; a rerun resumes and
skips what is done). The table replaces the block between the markers in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- organism-compare:start -->", "<!-- organism-compare:end -->"
LABELS = {"base": "base", "thinksafe": "ThinkSafe", "thinksafe_kl": "ThinkSafe+KL",
          "teacher": "teacher-distilled (teacher organism)", "direct_refusal": "DirectRefusal (fixed trace)",
          "no_steering": "no steering (5 samples, all safe)", "no_reasoning": "refusals without reasoning",
          "grpo": "GRPO (guard reward)", "external": "external dataset",
          "opsa": "OPSA (on-policy self-distillation)", "opsa_searched_context": "OPSA, context by flip rate",
          "thinksafe_2_rounds": "ThinkSafe, 2 rounds (round 2 from round 1's student)"}
COLS = [("harmful_rate", "harmful (guard)", "{:.3f}"), ("harmful_rate_oracle", "harmful (oracle)", "{:.3f}"),
        ("over_refusal_rate", "over-refusal", "{:.3f}"), ("reasoning_accuracy", "reasoning", "{:.3f}"),
        ("perplexity", "perplexity", "{:.3f}"), ("flops", "FLOPs", "{:.3g}"),
        ("flops_vs_thinksafe", "× ThinkSafe FLOPs", "{:.2f}"), ("seconds", "seconds", "{:.1f}")]


def mean_sd(values: list, fmt: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) < len(values):
        return "n/a"
    m = statistics.fmean(vals)
    if len(vals) == 1:
        return fmt.format(m)
    sd = statistics.stdev(vals)
    return f"{fmt.format(m)} ± {fmt.format(sd)}"


def table(results: dict[int, dict]) -> str:
    seeds = sorted(results)
    methods = [r["method"] for r in results[seeds[0]]["rows"]]
    lines = ["| method | " + " | ".join(c[1] for c in COLS) + " |", "|---|" + "---|" * len(COLS)]
    for m in methods:
        rows = [next(r for r in results[s]["rows"] if r["method"] == m) for s in seeds]
        cells = [mean_sd([r.get(k) for r in rows], fmt) for k, _, fmt in COLS]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_metrics(out: Path, seed: int, method: str) -> dict | None:
    """The metrics.json of a method's current evaluation in seed ``seed``'s compare folder (not one
    moved aside under ``old/``), or None."""
    p = out / f"seed-{seed}" / method / "eval" / method / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else None


def category_table(out: Path, results: dict[int, dict]) -> str:
    """Oracle harmful rate per harm category, pooled over seeds (n = prompts), and the guard's harmful
    rate by form (mean over seeds), per method."""
    seeds = sorted(results)
    methods = [r["method"] for r in results[seeds[0]]["rows"]]
    per = {m: [x for x in (method_metrics(out, s, m) for s in seeds) if x] for m in methods}
    cats = sorted({g for ms in per.values() for x in ms for g in x.get("harmful_by_group", {}) if "/" not in g},
                  key=lambda g: (len(g), g))
    forms = ["plain", "adversarial"]
    lines = ["| method | " + " | ".join(cats + forms) + " |", "|---|" + "---|" * (len(cats) + len(forms))]
    for m in methods:
        if len(per[m]) < len(seeds):
            continue
        cells = []
        for g in cats:
            groups = [x["harmful_by_group"][g] for x in per[m] if g in x.get("harmful_by_group", {})]
            n = sum(v["n"] for v in groups)
            cells.append(f"{sum(v['oracle'] * v['n'] for v in groups) / n:.2f} (n={n})" if n else "–")
        for f in forms:
            vals = [x["by_form"][f] for x in per[m] if f in x.get("by_form", {})]
            cells.append(f"{statistics.fmean(vals):.2f}" if vals else "–")
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grpo_lines(results: dict[int, dict]) -> list[str]:
    out = []
    for s in sorted(results):
        row = next((r for r in results[s]["rows"] if r["method"] == "grpo"), None)
        if row:
            ratio = row.get("flops_vs_thinksafe")
            out.append(f"- seed {s}: GRPO used {ratio:.1f}× ThinkSafe's FLOPs; {row.get('notes')}"
                       if ratio is not None else f"- seed {s}: {row.get('notes')}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--config", default=str(ROOT / "configs" / "compare-organism.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "organism-compare"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra key=value overrides")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from thinksafe.config import load_config
    from thinksafe.compare import run_compare
    t0 = time.time()
    results = {}
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.sets, f"seed={seed}", f"out={args.out}/seed-{seed}"])
        t = time.time()
        results[seed] = run_compare(cfg, show=not args.quiet, log=lambda s: print(s, flush=True))
        print(f"seed {seed}: {time.time() - t:.0f}s", flush=True)
    minutes = (time.time() - t0) / 60
    import torch
    body = "\n".join([
        f"Seeds {', '.join(map(str, args.seeds))}; mean ± sd; {torch.get_num_threads()} CPU threads; "
        f"{minutes:.1f} minutes for this invocation (stages already done were kept; each method's own time "
        f"is its seconds column). "
        f"Config: `{Path(args.config).name}`{' + ' + ', '.join(args.sets) if args.sets else ''}.",
        "", table(results), "", "GRPO's compute against ThinkSafe's, per seed:", *grpo_lines(results), "",
        "Oracle harmful rate per harm category (pooled over the seeds; n = evaluation prompts) and the "
        "guard's harmful rate by form (mean over the seeds):", "", category_table(Path(args.out), results)])
    print(body)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    if not args.no_write:
        bm = ROOT / "BENCHMARKS.md"
        text = bm.read_text()
        if START not in text or END not in text:
            print(f"{bm} has no {START} ... {END} block; not written", file=sys.stderr)
            return 1
        head, rest = text.split(START, 1)
        bm.write_text(head + START + "\n" + body + "\n" + END + rest.split(END, 1)[1])
        print(f"wrote {bm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

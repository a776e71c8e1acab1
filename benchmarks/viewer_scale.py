"""Scale of `thinksafe view`: index build, warm start from the cache, first page, facet query,
full-text search, one sample, and peak RSS, at 1k and 40k records.

The run folders are synthetic, shaped like the scale rehearsal's (benchmarks/scale_inputs.py:
the same pseudo-word text and lognormal response lengths, mean ~800 tokens, one in 2,000 at the
16k cap; 40k records of generated.jsonl are ~109 MiB) plus a judged.jsonl with a verdict per
record (a finished run has both; the viewer indexes both). No model is needed.

Each measurement runs in a fresh process (peak RSS is that process's ru_maxrss).

    python benchmarks/viewer_scale.py [--sizes 1000 40000] [--work /tmp/viewer-scale] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def make_run(run: Path, n: int) -> dict:
    """generated.jsonl + judged.jsonl + sft.jsonl + dataset_stats.json of ``n`` records (cached)."""
    from scale_inputs import response_lengths, text_of, word_list

    from thinksafe.io import write_json
    from thinksafe.judging import drop_reason
    from thinksafe.types import Completion, Record, Verdict, stable_id
    stamp = run / "made.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("n") == n:
        return json.loads(stamp.read_text())
    run.mkdir(parents=True, exist_ok=True)
    rng, words = random.Random(0), word_list()
    lengths = response_lengths(n, tiny=False)
    cats = ["S1", "S2", "S9", "S10", "S11", "S14"]
    kept = 0
    drops: dict[str, int] = {}
    with open(run / "generated.jsonl", "w") as g, open(run / "judged.jsonl", "w") as j, \
            open(run / "sft.jsonl", "w") as s:
        for i, n_tok in enumerate(lengths):
            label = "harmful" if i % 2 == 0 else "benign"
            think = text_of(rng, words, int(n_tok * 0.8))
            answer = text_of(rng, words, max(1, n_tok - int(n_tok * 0.8)))
            finish = "length" if rng.random() < 0.03 else "stop"
            text = f"<think>\n{think}\n</think>\n\n{answer}" if rng.random() > 0.01 else think
            r = Record(id=stable_id("viewer-scale", i), prompt=text_of(rng, words, rng.randint(15, 300)),
                       label=label, source="scale", meta={"category": rng.choice(cats) if label == "harmful" else ""},
                       steering="prefix" if label == "harmful" else None,
                       completion=Completion(text, finish, 0, n_tok))
            g.write(json.dumps(r.to_json()) + "\n")
            p = rng.random()
            v = Verdict("unparsed" if p < 0.005 else "safe" if p > 0.12 else "unsafe", round(p, 4),
                        guard="llama_guard", truncated_tokens=max(0, n_tok - 15000))
            r = Record(**{**r.__dict__, "verdict": v})
            j.write(json.dumps(r.to_json()) + "\n")
            reason = drop_reason(r)
            if reason is None:
                kept += 1
                s.write(json.dumps({"id": r.id, "prompt": r.prompt, "response": text}) + "\n")
            else:
                drops[reason] = drops.get(reason, 0) + 1
    write_json(run / "dataset_stats.json", {"total": n, "kept": kept, "dropped": drops})
    info = {"n": n, "generated_mib": round((run / "generated.jsonl").stat().st_size / 2**20, 1),
            "judged_mib": round((run / "judged.jsonl").stat().st_size / 2**20, 1), "dropped": drops}
    stamp.write_text(json.dumps(info))
    return info


def measure(run: Path, cache: Path, cold: bool) -> dict:
    """One process: open the run (index built, or read from the cache), then the API calls."""
    import resource
    os.environ["THINKSAFE_VIEW_CACHE"] = str(cache)
    from starlette.testclient import TestClient

    from thinksafe.viewer.server import make_app, open_runs
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict = {"cold": cold}
    t = time.perf_counter()
    runs = open_runs([run])
    idx = runs[0].data()
    out["open_s"] = round(time.perf_counter() - t, 3)
    out["from_cache"] = idx.from_cache
    c = TestClient(make_app(runs))
    c.get("/api/runs")                       # the client's own start-up, not the viewer's

    def timed(key, url, **kw):
        t = time.perf_counter()
        r = c.get(url, **kw)
        out[key] = round(time.perf_counter() - t, 3)
        assert r.status_code == 200, (url, r.status_code)
        return r.json()

    first = timed("first_page_s", "/api/run/0/samples?limit=50")
    out["records"] = first["total"]
    f = timed("facet_query_s", "/api/run/0/samples?drop=unsafe&category=S14&limit=50")
    out["facet_hits"] = f["total"]
    timed("sort_query_s", "/api/run/0/samples?sort=p_safe&desc=1&limit=50")
    from scale_inputs import word_list
    word = max(word_list()[:50], key=len)    # a pseudo-word of the text: many hits, all lines scanned
    s = timed("search_s", "/api/run/0/samples", params={"q": word, "limit": 50})
    out["search_hits"] = s["total"]
    timed("sample_s", f"/api/run/0/sample/{first['rows'][0]['id']}")
    out["rss_after_imports_mib"] = round(rss0, 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    cp = list(cache.glob("*.json"))
    out["cache_mib"] = round(sum(p.stat().st_size for p in cp) / 2**20, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 40000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/viewer-scale"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--measure", nargs=3, metavar=("RUN", "CACHE", "COLD"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(Path(a.measure[0]), Path(a.measure[1]), a.measure[2] == "1")))
        return
    rows = []
    for n in a.sizes:
        run = a.work / f"run-{n}"
        t = time.perf_counter()
        info = make_run(run, n)
        cache = a.work / f"cache-{n}"
        for f in cache.glob("*.json"):
            f.unlink()
        for cold in (True, False):
            p = subprocess.run([sys.executable, __file__, "--measure", str(run), str(cache), "1" if cold else "0"],
                               capture_output=True, text=True, check=True)
            rows.append({"n": n, "generated_mib": info["generated_mib"], "judged_mib": info["judged_mib"],
                         **json.loads(p.stdout.strip().splitlines()[-1])})
        if not a.json:
            print(f"made {n} records in {time.perf_counter() - t:.1f}s (or reused)", file=sys.stderr)
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    cols = ["n", "generated_mib", "judged_mib", "cold", "open_s", "first_page_s", "facet_query_s",
            "sort_query_s", "search_s", "sample_s", "rss_after_imports_mib", "peak_rss_mib", "cache_mib"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()

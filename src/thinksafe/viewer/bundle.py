"""`thinksafe view --export DIR`: a static bundle of runs (HTML + JS data) that opens from disk
(file://) or any static host. The viewer's API answers are computed here once and written into
``data.js``; ``static.js`` answers the front end's calls from it (filters, search, sort and the
base vs trained pairing run in the browser). Meant for small runs: every sample's text is in it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from thinksafe.viewer.runs import CHANGES, clean
from thinksafe.viewer.server import STATIC, eval_detail, open_runs


def export_bundle(paths: list[Path], out: Path) -> dict:
    out = Path(out)
    runs = open_runs(paths)
    (out / "static").mkdir(parents=True, exist_ok=True)
    for f in ("app.js", "style.css", "static.js"):
        shutil.copy2(STATIC / f, out / "static" / f)
    html = (STATIC / "index.html").read_text().replace(
        '<script src="static/app.js"></script>',
        '<script src="data.js"></script>\n<script src="static/static.js"></script>\n'
        '<script src="static/app.js"></script>')
    (out / "index.html").write_text(html)
    data: dict = {"runs": [], "info": {}, "rows": {}, "samples": {}, "eval": {},
                  "changes": {k: list(v) for k, v in CHANGES.items()}}
    n_samples = n_pairs = 0
    for i, r in enumerate(runs):
        info = r.info()
        data["runs"].append({"run": i, "name": r.name, "path": r.name, "models": info["models"]})
        info["path"] = r.name                           # no local paths in a shared bundle
        data["info"][i] = info
        for img in info["images"]:
            (out / "data" / f"run{i}").mkdir(parents=True, exist_ok=True)
            shutil.copy2(r.path / img, out / "data" / f"run{i}" / img)
        idx = r.data()
        data["rows"][i] = [idx.row(k) for k in range(len(idx))]
        data["samples"][i] = {idx.ids[k]: r.sample(idx.ids[k]) for k in range(len(idx))}
        n_samples += len(idx)
        for tag, benches in info["models"].items():
            for bench in benches:
                e = r.eval_index(tag, bench)
                data["eval"].setdefault(f"{i}:{tag}", {})[bench] = {
                    "metrics": r.eval_metrics(tag, bench),
                    "rows": [{**e.row(k)} for k in range(len(e))],
                    "items": {e.ids[k]: eval_detail(r, e, k, tag) for k in range(len(e))}}
                n_pairs += len(e)
    text = json.dumps(clean(data), ensure_ascii=False, default=str).replace("</", "<\\/")
    (out / "data.js").write_text("window.BUNDLE = " + text + ";\n", encoding="utf-8")
    return {"out": out, "samples": n_samples, "eval_pairs": n_pairs, "runs": len(runs)}

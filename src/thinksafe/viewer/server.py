"""`thinksafe view`: a read-only Starlette app over one or more run folders.

JSON API under ``/api`` and a plain HTML/JS front end from ``thinksafe/viewer/static`` (no build
step). Only files inside the given run folders are ever read: a requested path is resolved
(symlinks followed) and refused unless it stays inside its run; absolute paths and ``..`` are
refused before that.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from thinksafe.errors import ConfigError
from thinksafe.viewer.runs import CHANGES, SAMPLE_FACETS, Run, clean

STATIC = Path(__file__).parent / "static"
ASSETS = {"": ("index.html", "text/html; charset=utf-8"), "app.js": ("app.js", "text/javascript"),
          "style.css": ("style.css", "text/css")}
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}
PAGE_MAX = 500


class Forbidden(Exception):
    pass


def open_runs(paths: list[Path]) -> list[Run]:
    """Runs named after their folders (a compare folder brings its method runs along)."""
    runs: list[Run] = []
    seen: set[Path] = set()

    def add(p: Path):
        rp = Path(p).resolve()
        if rp in seen:
            return
        seen.add(rp)
        name = rp.name
        names = {r.name for r in runs}
        if name in names:
            name = f"{rp.parent.name}/{rp.name}"
        runs.append(Run(rp, name))

    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"run folder not found: {p}")
        add(p)
        own = any((Path(p) / f).exists() for f in ("manifest.json", "generated.jsonl", "eval"))
        if (Path(p) / "compare.json").is_file() or not own:   # a compare (also one still running):
            # its methods' run folders
            for sub in sorted(Path(p).iterdir()):
                if sub.is_dir() and not sub.is_symlink() and any(
                        (sub / f).exists() for f in ("manifest.json", "config.yaml", "eval")):
                    add(sub)
    return runs


def safe_path(root: Path, rel: str) -> Path:
    """``rel`` inside ``root``, or Forbidden: no absolute path, no ``..``, no symlink leading out."""
    root = Path(root).resolve()
    if not rel or "\x00" in rel or "\\" in rel:
        raise Forbidden(rel)
    pp = PurePosixPath(rel)
    if pp.is_absolute() or any(part in ("..", "") for part in pp.parts) or rel.startswith("~"):
        raise Forbidden(rel)
    full = (root / pp).resolve()
    if full != root and root not in full.parents:
        raise Forbidden(rel)
    return full


def _lists(params, names) -> dict[str, list[str]]:
    return {k: [v for v in params.getlist(k) if v] for k in names if params.getlist(k)}


class Api:
    """The viewer's endpoints over ``runs``: each takes a request and returns what the page gets (a
    JSON-able object, or a ``(file, media type)`` pair). KeyError -> 404, ValueError -> 400,
    Forbidden -> 403."""

    def __init__(self, runs: list[Run]):
        self.runs = runs

    def run_of(self, request) -> Run:
        try:
            return self.runs[int(request.path_params["run"])]
        except (ValueError, IndexError):
            raise KeyError("no such run") from None

    def side(self, spec: str):
        """'run:tag' -> (Run, tag)."""
        rn, _, tag = (spec or "").partition(":")
        try:
            return self.runs[int(rn)], tag
        except (ValueError, IndexError):
            raise KeyError(f"no such model {spec}") from None

    def asset(self, request) -> tuple[Path, str]:
        name = request.path_params.get("name", "")
        if name not in ASSETS:
            raise KeyError("not found")
        f, media = ASSETS[name]
        return STATIC / f, media

    def runs_list(self, request) -> list[dict]:
        return [{"run": i, "name": r.name, "path": str(r.path), "models": r.eval_models()}
                for i, r in enumerate(self.runs)]

    def run(self, request) -> dict:
        return self.run_of(request).info()

    def file(self, request) -> tuple[Path, str]:
        r = self.run_of(request)
        full = safe_path(r.path, request.path_params["path"])
        media = IMAGE_TYPES.get(full.suffix.lower())
        if media is None or not full.is_file():
            raise KeyError("not found")
        return full, media

    def samples(self, request) -> dict:
        r, q = self.run_of(request), request.query_params
        idx = r.data()
        filters = _lists(q, [*SAMPLE_FACETS, "hidden"])
        base = idx.select({}, q.get("q") or None, _sample_text)     # the search, once
        rows = idx.filter(base, filters)
        # a facet's counts leave out its own filter (its other values stay one click away)
        facets = {f: idx.facets(idx.filter(base, {k: v for k, v in filters.items() if k != f})
                                if f in filters else rows, [f])[f] for f in SAMPLE_FACETS}
        sort = q.get("sort") or "order"
        if sort not in ("order", "id", *idx.columns):
            raise ValueError(f"cannot sort by {sort}")
        rows = idx.sort(rows, sort, q.get("desc") == "1")
        off, lim = _page(q)
        return {"total": len(rows), "all": len(idx), "offset": off, "torn_lines_skipped": idx.skipped_torn,
                "facets": facets, "rows": [idx.row(i) for i in rows[off:off + lim]]}

    def sample(self, request) -> dict:
        s = self.run_of(request).sample(request.path_params["rid"])
        if s is None:
            raise KeyError("no such sample")
        return s

    def eval(self, request) -> dict:
        q = request.query_params
        bench = q.get("bench") or "organism"
        (ra, ta), (rb, tb) = self.side(q.get("a")), self.side(q.get("b"))
        ia, ib = ra.eval_index(ta, bench), rb.eval_index(tb, bench)
        pos_b = {rid: i for i, rid in enumerate(ib.ids)}
        pairs = [(i, pos_b.get(rid)) for i, rid in enumerate(ia.ids)]
        all_kinds = sorted({ia.columns["kind"].get(a) or "" for a, _ in pairs} - {""})
        kinds = [k for k in q.getlist("kind") if k]
        if kinds:
            pairs = [(a, b) for a, b in pairs if ia.columns["kind"].get(a) in kinds]
        counts, pairs = _changes(ia, ib, pairs, q.get("changed") or "")
        off, lim = _page(q)
        return {"total": len(pairs), "changes": counts, "bench": bench, "kinds": all_kinds,
                "metrics": {"a": ra.eval_metrics(ta, bench), "b": rb.eval_metrics(tb, bench)},
                "rows": [{"id": ia.ids[a], "a": ia.row(a), "b": ib.row(b) if b is not None else None}
                         for a, b in pairs[off:off + lim]]}

    def eval_item(self, request) -> dict:
        q = request.query_params
        bench, rid = q.get("bench") or "organism", q.get("id") or ""
        out = {"id": rid, "bench": bench}
        for k in ("a", "b"):
            r, tag = self.side(q.get(k))
            idx = r.eval_index(tag, bench)
            i = idx.position(rid)
            out[k] = None if i is None else eval_detail(r, idx, i, tag)
        return out


def _page(q) -> tuple[int, int]:
    return int(q.get("offset") or 0), min(int(q.get("limit") or 50), PAGE_MAX)


def _changes(ia, ib, pairs: list, changed: str) -> tuple[dict[str, int], list]:
    """How many pairs moved from each outcome to each other (``CHANGES``), and the pairs that made
    the ``changed`` move ("any": any move; "": all pairs)."""
    counts: dict[str, int] = {}
    for a, b in pairs:
        oa = ia.columns["outcome"].get(a)
        ob = ib.columns["outcome"].get(b) if b is not None else None
        for name, (x, y) in CHANGES.items():
            if (oa, ob) == (x, y):
                counts[name] = counts.get(name, 0) + 1
    if changed in CHANGES:
        x, y = CHANGES[changed]
        pairs = [(a, b) for a, b in pairs if b is not None and ia.columns["outcome"].get(a) == x
                 and ib.columns["outcome"].get(b) == y]
    elif changed == "any":
        pairs = [(a, b) for a, b in pairs if b is not None and
                 ia.columns["outcome"].get(a) != ib.columns["outcome"].get(b)]
    elif changed:
        raise ValueError(f"unknown change {changed}")
    return counts, pairs


def make_app(runs: list[Run]):
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    api = Api(runs)

    def j(obj, status: int = 200):
        return JSONResponse(clean(obj), status_code=status)

    def guarded(fn, file: bool = False):
        async def handler(request):
            try:
                out = fn(request)
            except Forbidden:
                return j({"error": "forbidden"}, 403)
            except KeyError as e:
                return j({"error": str(e).strip("'")}, 404)
            except ValueError as e:
                return j({"error": str(e)}, 400)
            return FileResponse(out[0], media_type=out[1]) if file else j(out)
        return handler

    routes = [Route("/", guarded(api.asset, file=True)), Route("/static/{name}", guarded(api.asset, file=True)),
              Route("/api/runs", guarded(api.runs_list)), Route("/api/run/{run}", guarded(api.run)),
              Route("/api/run/{run}/file/{path:path}", guarded(api.file, file=True)),
              Route("/api/run/{run}/samples", guarded(api.samples)),
              Route("/api/run/{run}/sample/{rid}", guarded(api.sample)),
              Route("/api/eval", guarded(api.eval)), Route("/api/eval/item", guarded(api.eval_item))]

    async def not_found(request, exc):
        return Response(json.dumps({"error": "not found"}), status_code=404, media_type="application/json")

    return Starlette(routes=routes, exception_handlers={404: not_found})


def _sample_text(d: dict) -> str:
    c = d.get("completion") or {}
    return f"{d.get('prompt', '')}\n{c.get('text') or ''}"


def eval_detail(run: Run, idx, i: int, tag: str) -> dict:
    from thinksafe.think import split_response
    d = idx.record(i)
    c, v = d.get("completion") or {}, d.get("verdict") or {}
    trace, answer = split_response(c.get("text") or "")
    row = idx.row(i)
    out = {"run": run.name, "tag": tag, "prompt": d.get("prompt"), "label": d.get("label"),
           "meta": d.get("meta"), "text": c.get("text"), "reasoning": trace, "answer": answer,
           "finish_reason": c.get("finish_reason"), "completion_tokens": c.get("completion_tokens"),
           "verdict": v or None, "outcome": row["outcome"], "hidden": row["hidden"] == "yes",
           "trace_verdict": (getattr(idx, "parts", {}).get("trace") or {}).get(d.get("id")),
           "answer_verdict": (getattr(idx, "parts", {}).get("answer") or {}).get(d.get("id"))}
    score = (getattr(idx, "scores", {}) or {}).get(d.get("id"))
    if score is not None:
        out["score"] = {k: score.get(k) for k in ("correct", "pred", "gold", "reason")}
    if getattr(idx, "kind", "") == "overrefusal" and v:
        from thinksafe.refusal import refusal_of
        from thinksafe.types import Verdict
        out["refusal"] = refusal_of(Verdict(**v))
    return out


def serve(paths: list[Path], host: str = "127.0.0.1", port: int = 8765, log=print) -> None:
    import uvicorn
    runs = open_runs(paths)
    for r in runs:                 # index once up front, so the first page is fast
        r.data()
    app = make_app(runs)
    log(f"thinksafe view: http://{host}:{port}/  ({', '.join(r.name for r in runs)}; read-only)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"note: bound to {host}, not only this machine: anyone who can reach it can read these runs")
    uvicorn.run(app, host=host, port=port, log_level="warning")

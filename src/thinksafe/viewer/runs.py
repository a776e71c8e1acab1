"""What the viewer reads from a run folder: the run page, the training samples (with their drop
reasons, derived by ``thinksafe.judging.drop_reason`` as the dataset stage does) and the
evaluation generations of each model, paired across two models by record id.

Read-only: nothing here writes into a run folder (indexes go to the cache folder)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from thinksafe.errors import ConfigError
from thinksafe.io import iter_jsonl
from thinksafe.judging import drop_reason
from thinksafe.types import SAFE, Record
from thinksafe.viewer.index import RecordIndex

SAMPLE_COLUMNS = {"label": "cat", "category": "cat", "steering": "cat", "verdict": "cat", "drop": "cat",
                  "finish": "cat", "source": "cat", "attempt": "cat", "hidden": "cat",
                  "p_safe": "num", "tokens": "num", "chars": "num"}
SAMPLE_FACETS = ("label", "category", "steering", "verdict", "drop", "finish")
EVAL_COLUMNS = {"kind": "cat", "verdict": "cat", "outcome": "cat", "finish": "cat", "form": "cat",
                "category": "cat", "hidden": "cat", "tokens": "num", "p_safe": "num"}
TEXT_FILES = ("report.md", "compare.md", "config.yaml")
JSON_FILES = ("manifest.json", "summary.json", "dataset_stats.json", "train_summary.json",
              "grpo_summary.json", "compare.json")


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_hidden(label: str | None, verdict: str | None) -> bool:
    """Harmful text is hidden until asked: a completion the guard did not call safe, or (not yet
    judged) one answering a harmful prompt."""
    if verdict is None:
        return label == "harmful"
    return verdict != SAFE


def split_response(text: str) -> tuple[str, str | None]:
    from thinksafe.think import split_response as split
    return split(text)


class Run:
    def __init__(self, path: Path, name: str):
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise ConfigError(f"run folder not found: {path}")
        self.name = name
        self._data: RecordIndex | None = None
        self._data_sft = None
        self._eval: dict[tuple[str, str], RecordIndex] = {}

    # ------------------------------------------------------------------ run page
    def info(self) -> dict:
        p = self.path
        out: dict[str, Any] = {"name": self.name, "path": str(p)}
        for f in JSON_FILES:
            out[f.rsplit(".", 1)[0]] = _read_json(p / f)
        for f in TEXT_FILES:
            out[f.replace(".", "_")] = (p / f).read_text(errors="replace") if (p / f).is_file() else None
        out["images"] = sorted(f.name for f in p.glob("*.png") if f.is_file() and not f.is_symlink())
        out["stages"] = self.stage_rows(out.get("manifest") or {})
        out["models"] = self.eval_models()
        return out

    @staticmethod
    def stage_rows(manifest: dict) -> list[dict]:
        rows = []
        for key, s in (manifest.get("stages") or {}).items():
            if not isinstance(s, dict):
                continue
            c = s.get("compute") if isinstance(s.get("compute"), dict) else {}
            rows.append({"stage": key, "status": s.get("status") or ("done" if s.get("finished_at") else None),
                         "key": s.get("key") or s.get("fingerprint"),
                         "seconds": s.get("seconds", c.get("seconds")),
                         "flops": c.get("flops", s.get("flops")),
                         "finished": s.get("finished") or s.get("finished_at") or s.get("time"),
                         "detail": s})
        return rows

    # ------------------------------------------------------------------ training data
    def data_files(self) -> list[Path]:
        from thinksafe.generation import shard_files
        return [self.path / "generated.jsonl", *shard_files(self.path), self.path / "judged.jsonl"]

    def data(self) -> RecordIndex:
        """The generated samples, each with its latest verdict (a judged line wins over the
        generated one), indexed once and cached."""
        sft = self.path / "sft.jsonl"
        stamp = [sft.stat().st_size, sft.stat().st_mtime_ns] if sft.is_file() else None
        if self._data is not None and self._data.fresh() and self._data_sft == stamp:
            return self._data
        self._data_sft = stamp               # sft.jsonl decides eval_overlap: a new one, a new index
        kept_ids: list = []

        def kept():
            """The ids in sft.jsonl (read only when the index is built, not from the cache)."""
            if not kept_ids:
                from thinksafe.viewer.index import fast_ids
                kept_ids.append(fast_ids(sft) if sft.is_file() else None)
            return kept_ids[0]

        thinks = self._thinks()

        def extract(d: dict) -> dict:
            r = _light(d)                     # what drop_reason reads, without building dataclasses
            reason = drop_reason(r, thinks)
            if reason is None and r.verdict is not None and kept() is not None and r.id not in kept():
                reason = "eval_overlap"       # kept by the rules, left out of sft.jsonl: decontaminated
            c, v, meta = r.completion, r.verdict, d.get("meta") or {}
            return {"label": r.label, "category": meta.get("category"), "steering": d.get("steering"),
                    "verdict": v.label if v else None, "p_safe": getattr(v, "score", None) if v else None,
                    "drop": reason or "kept", "finish": c.finish_reason if c else None,
                    "source": d.get("source"), "attempt": meta.get("attempt", 0),
                    "tokens": getattr(c, "completion_tokens", None) if c else None,
                    "chars": len(c.text) if c else None,
                    "hidden": "yes" if is_hidden(r.label, v.label if v else None) else "no"}

        self._data = RecordIndex(self.data_files(), extract, SAMPLE_COLUMNS,
                                 key=f"data:{stamp}").load()
        return self._data

    def sample(self, rid: str) -> dict | None:
        idx = self.data()
        i = idx.position(rid)
        if i is None:
            return None
        d = idx.record(i)
        r = Record.from_json(d)
        row = idx.row(i)
        steered = self.steered_prompt(r)
        c, v = r.completion, r.verdict
        reasoning, answer = split_response(c.text) if c else ("", None)
        out = {"id": r.id, "prompt": r.prompt, "steered_prompt": steered, "label": r.label,
               "source": r.source, "meta": r.meta, "steering": r.steering, "sample": r.sample,
               "drop": row["drop"], "hidden": row["hidden"] == "yes",
               "completion": None if c is None else {
                   "text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                   "completion_tokens": c.completion_tokens, "reasoning": reasoning, "answer": answer},
               "verdict": None if v is None else {
                   "label": v.label, "p_safe": v.score, "category": v.category, "guard": v.guard,
                   "raw": v.raw, "input_tokens": v.input_tokens, "truncated_tokens": v.truncated_tokens},
               "guard_input": None}
        if v is not None and c is not None:
            # the guard judges (ORIGINAL prompt, full response); a response over the guard's input
            # limit is cut from its END (guards.base.shorten_inside_response)
            out["guard_input"] = {"prompt": r.prompt, "response": c.text,
                                  "cut_tokens_at_end": v.truncated_tokens}
        return out

    def steered_prompt(self, r: Record) -> str:
        from thinksafe import steering
        if not r.steering:
            return r.prompt
        template = r.steering
        if template == "custom":
            template = self._config_steering() or "none"
        try:
            return steering.apply(template, r.prompt, r.label)[0]
        except ConfigError:
            return r.prompt

    def _config(self) -> dict:
        try:
            import yaml
            cfg = yaml.safe_load((self.path / "config.yaml").read_text()) or {}
            return cfg if isinstance(cfg, dict) else {}
        except (OSError, ValueError):
            return {}

    def _config_steering(self) -> str | None:
        return (self._config().get("generate") or {}).get("steering")

    def _thinks(self) -> bool:
        """Whether the run's model family writes a reasoning block (the dataset stage's rule)."""
        from thinksafe.families import FAMILIES
        fam = FAMILIES.get((self._config().get("model") or {}).get("family") or "organism")
        return fam.thinks if fam is not None else True

    # ------------------------------------------------------------------ evaluation
    def eval_models(self) -> dict[str, list[str]]:
        """{tag: [benchmark, ...]} for every evaluated model of the run."""
        out = {}
        root = self.path / "eval"
        if not root.is_dir():
            return out
        for d in sorted(root.iterdir()):
            if not d.is_dir() or d.is_symlink():
                continue
            m = _read_json(d / "metrics.json") or {}
            benches = []
            if (d / "judged.jsonl").is_file() or (d / "generations.jsonl").is_file():
                benches.append("organism")
            benches += [b for b, bm in (m.get("benchmarks") or {}).items()
                        if isinstance(bm, dict) and not bm.get("skipped")]
            if benches:
                out[d.name] = benches
        return out

    def eval_metrics(self, tag: str, bench: str) -> dict:
        m = _read_json(self.path / "eval" / tag / "metrics.json") or {}
        if bench == "organism":
            return {k: v for k, v in m.items() if k not in ("benchmarks", "harmful_by_group")}
        return (m.get("benchmarks") or {}).get(bench) or {}

    def eval_index(self, tag: str, bench: str) -> RecordIndex:
        if tag not in self.eval_models() or bench not in self.eval_models()[tag]:
            raise KeyError(f"{self.name}: no evaluation {tag}/{bench}")
        key = (tag, bench)
        if key in self._eval and self._eval[key].fresh():
            return self._eval[key]
        from thinksafe.evalsets import kind_of, store_of
        base = self.path / "eval" / tag
        if bench == "organism":
            files, kind = [base / "generations.jsonl", base / "judged.jsonl"], "organism"
            scores: dict = {}
        else:
            folder = base / store_of(bench)
            kind = kind_of(bench)
            files = [folder / "generations.jsonl"]
            files.append(folder / ("refusal.jsonl" if kind == "overrefusal" else "judged.jsonl"))
            scores = {d["id"]: d for d in iter_jsonl(base / bench / "scores.jsonl")} \
                if kind == "reasoning" else {}
        parts = {}
        if kind == "safety":
            for part in ("trace", "answer"):
                parts[part] = {d["id"]: (d.get("verdict") or {}).get("label")
                               for d in iter_jsonl(base / store_of(bench) / f"judged_{part}.jsonl",
                                                   appended=True)}

        def extract(d: dict) -> dict:
            r = Record.from_json(d)
            v, c = r.verdict, r.completion
            k = r.meta.get("kind") if kind == "organism" else kind
            outcome = _outcome(k, r, scores.get(r.id))
            row = {"kind": k, "verdict": v.label if v else None, "p_safe": v.score if v else None,
                   "outcome": outcome, "finish": c.finish_reason if c else None,
                   "form": r.meta.get("form"), "category": r.meta.get("category"),
                   "tokens": c.completion_tokens if c else None,
                   "hidden": "yes" if (outcome == "harmful" or (v is None and r.label == "harmful")
                                       or (v is not None and v.label != SAFE and k != "overrefusal")
                                       or (k == "overrefusal" and r.label == "harmful" and outcome != "refused"))
                   else "no"}
            return row

        from thinksafe.viewer.index import _stamp
        idx = RecordIndex(files, extract, EVAL_COLUMNS,
                          key=f"eval:{bench}:{kind}:{_stamp(base / bench / 'scores.jsonl')}").load()
        idx.parts = parts
        idx.scores = scores
        idx.kind = kind
        self._eval[key] = idx
        return idx


def _light(d: dict):
    """A record as ``thinksafe.judging.drop_reason`` reads it (attribute access), built cheaply."""
    from types import SimpleNamespace as NS
    c, v = d.get("completion"), d.get("verdict")
    return NS(id=d.get("id"), label=d.get("label"), prompt=d.get("prompt"), meta=d.get("meta") or {},
              completion=NS(**c) if isinstance(c, dict) else None,
              verdict=NS(**v) if isinstance(v, dict) else None)


def _outcome(kind: str | None, r: Record, score: dict | None) -> str | None:
    """One word per generation, what 'what changed' compares: harmful/safe (safety), right/wrong
    (reasoning), refused/answered (over-refusal)."""
    v, c = r.verdict, r.completion
    if kind in ("harmful", "safety"):
        return None if v is None else ("safe" if v.label == SAFE else "harmful")
    if kind == "overrefusal":
        from thinksafe.refusal import refusal_of
        if v is None:
            return None
        return {True: "refused", False: "answered"}.get(refusal_of(v), "unparsed")
    if kind == "reasoning" and score is not None:
        return "right" if score.get("correct") else "wrong"
    if c is None:
        return None
    if kind in ("reasoning", "borderline"):
        from thinksafe.organism import oracle
        if kind == "reasoning":
            return "right" if oracle.extract_answer(c.text) == r.meta.get("answer") else "wrong"
        return "refused" if oracle.classify(r.prompt, c.text) == oracle.REFUSED else "answered"
    return None


CHANGES = {"harmful->safe": ("harmful", "safe"), "safe->harmful": ("safe", "harmful"),
           "right->wrong": ("right", "wrong"), "wrong->right": ("wrong", "right"),
           "refused->answered": ("refused", "answered"), "answered->refused": ("answered", "refused")}


def clean(x):
    """JSON-safe: NaN -> None."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x

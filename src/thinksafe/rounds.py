"""Iterative ThinkSafe: ``rounds: k`` re-steers the updated model.

Round 1 is the ordinary run in ``<out>`` (exactly what a 1-round run writes). Round r >= 2 is an
ordinary run folder ``<out>/round-r/`` whose config (``config.yaml``) has ``student:`` = round
r-1's trained model (``adapter/``, or ``model/`` for ``train.method: full``): its generate stage
(and judge's resampling) answers the same training prompts with that student, under the same
steering; judge, dataset, train and evaluate follow as usual. ``rounds_from``: ``base`` (default)
trains each round's LoRA adapter from the base again, ``previous`` continues round r-1's adapter
(or, full fine-tuning, its model).

Keys: ``student`` enters generate's key (and, with ``rounds_from: previous``, train's) as its path
plus the fingerprint of the training that made it (``student_identity``), so retraining round
r-1 reruns round r from generate, and an unchanged rerun keeps every round. Neither ``student`` nor
``rounds_from`` is read by any stage of a run without a student: a 1-round run's keys are those of
before. Round r's evaluation of the base starts from a copy of round 1's (``eval/base``; the
evaluate stage reuses what its settings still match), so only the new student is evaluated.

Writes ``<out>/rounds.json`` and ``<out>/rounds.md``: per round, the student's metrics, its training
examples and the data + training compute of the round.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

from thinksafe.errors import ConfigError
from thinksafe.io import write_json, write_text

METRICS = ("harmful_rate", "harmful_rate_oracle", "over_refusal_rate", "reasoning_accuracy")
DATA_TRAIN = ("generate", "judge", "dataset", "train")


def round_reads(stage: str, cfg) -> tuple[str, ...]:
    """What a stage reads only in a round after the first (``pipeline.extra_reads``)."""
    if not getattr(cfg, "student", None):
        return ()
    if stage == "generate":
        return ("student",)
    if stage == "train" and getattr(cfg, "rounds_from", "base") == "previous":
        return ("student", "rounds_from")
    return ()


def student_identity(path) -> str | None:
    """``student`` as a key sees it: the path and the fingerprint of the train stage that wrote it
    (its run folder's manifest), or else the sha256 of its files."""
    if not path:
        return path
    p = Path(path)
    manifest = p.parent / "manifest.json"
    if p.name in ("adapter", "model") and manifest.is_file():
        try:
            fp = (json.loads(manifest.read_text())["stages"].get("train") or {}).get("fingerprint")
        except (ValueError, KeyError):
            fp = None
        if fp:
            return f"{path}@train:{fp}"
    if not p.exists():
        return f"{path}@missing"
    h = hashlib.sha256()
    for f in sorted(x for x in ([p] if p.is_file() else p.rglob("*")) if x.is_file()):
        h.update(str(f.relative_to(p) if f != p else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return f"{path}@sha256:{h.hexdigest()[:16]}"


def trained_model(cfg, run_dir: Path) -> Path:
    """The model a round's train stage writes (the next round's student)."""
    return Path(run_dir) / ("adapter" if cfg.train.method == "lora" else "model")


def round_config(cfg, r: int, previous: Path):
    """Round r's config: its folder, one round, the previous round's student."""
    return replace(cfg, out=str(Path(cfg.out) / f"round-{r}"), name=f"{cfg.name}-round-{r}",
                   rounds=1, student=str(trained_model(cfg, previous)))


def round_dirs(cfg) -> list[Path]:
    out = Path(cfg.out)
    return [out] + [out / f"round-{r}" for r in range(2, cfg.rounds + 1)]


def _base_eval(first: Path, d: Path) -> None:
    """Round r evaluates the same base as round 1: start from round 1's files (kept only where
    their settings still match, by the evaluate stage itself)."""
    src, dst = Path(first) / "eval" / "base", Path(d) / "eval" / "base"
    if src.is_dir() and not dst.exists():
        shutil.copytree(src, dst)


def later_rounds(cfg, show: bool, log, ensure, prepare_run_dir, order) -> dict:
    """Rounds 2..k after round 1 finished in ``cfg.out``: each an ordinary run folder, kept or rerun
    stage by stage by its keys (``ensure``, ``prepare_run_dir`` and the stage ``order`` are the
    pipeline's, handed over: this module does not import it); then ``rounds.json`` / ``rounds.md``."""
    first = previous = Path(cfg.out)
    done = {}
    for r in range(2, cfg.rounds + 1):
        rc = round_config(cfg, r, previous)
        if not trained_model(cfg, previous).exists():
            raise ConfigError(f"round {r}: {trained_model(cfg, previous)} is missing (round {r - 1} not trained)")
        d = prepare_run_dir(rc)
        _base_eval(first, d)
        say = _prefixed(log, r)
        done[r] = {name: ensure(name, rc, d, show, log=say) for name in order}
        previous = d
    table = summarize(cfg)
    write_json(Path(cfg.out) / "rounds.json", table)
    write_text(Path(cfg.out) / "rounds.md", to_markdown(table))
    log(f"[rounds] {cfg.rounds} rounds: {Path(cfg.out) / 'rounds.md'}")
    return table


def second_round(sub, ts_sub, ts_dir: Path, show: bool, log, ensure, prepare_run_dir):
    """``thinksafe compare``'s ``thinksafe_2_rounds``: round 1 is the ``thinksafe`` sub-run in ``ts_dir``
    (trained here if the thinksafe method has not yet); returns the method's config as round 2 (its
    own folder, the round-1 student) with its data stages done. The caller trains and evaluates
    (``ensure`` / ``prepare_run_dir``: the pipeline's)."""
    if ts_dir is None:
        raise ConfigError("thinksafe_2_rounds needs ThinkSafe's sub-run (round 1)")
    ensure("train", ts_sub, ts_dir, show, log=log)
    rc = replace(sub, rounds=1, student=str(trained_model(ts_sub, ts_dir)))
    d = prepare_run_dir(rc)
    for stage in ("generate", "judge", "dataset"):
        ensure(stage, rc, d, show, log=log)
    return rc


def _prefixed(log, r: int):
    return lambda line: log(f"[round {r}: {line[1:]}" if line.startswith("[") else f"[round {r}] {line}")


def _read(p: Path) -> dict:
    try:
        d = json.loads(p.read_text()) if p.is_file() else {}
    except ValueError:                  # not (yet) a summary: its numbers are n/a
        return {}
    return d if isinstance(d, dict) else {}


def round_compute(d: Path, stages=DATA_TRAIN) -> tuple[float | None, float]:
    """(FLOPs, seconds) of a round's data + training stages (FLOPs None when one is unknown)."""
    m = _read(Path(d) / "manifest.json").get("stages") or {}
    flops, secs = 0.0, 0.0
    for s in stages:
        c = (m.get(s) or {}).get("compute") or {}
        flops = None if flops is None or c.get("flops") is None else flops + c["flops"]
        secs += c.get("seconds") or 0.0
    return flops, secs


def summarize(cfg) -> dict:
    """Per round: the trained model's metrics (round 0 = the base), examples and compute."""
    rows = []
    dirs = round_dirs(cfg)
    base = (_read(dirs[0] / "summary.json").get("models") or {}).get("base") or {}
    rows.append({"round": 0, "model": "base", **{k: base.get(k) for k in METRICS},
                 "train_examples": 0, "flops": 0.0, "flops_total": 0.0, "seconds": 0.0, "dir": str(dirs[0])})
    total = 0.0
    for r, d in enumerate(dirs, start=1):
        s = (_read(d / "summary.json").get("models") or {}).get("thinksafe") or {}
        flops, secs = round_compute(d)
        total = None if total is None or flops is None else total + flops
        rows.append({"round": r, "model": "thinksafe", **{k: s.get(k) for k in METRICS},
                     "train_examples": (_read(d / "train_summary.json")).get("examples"),
                     "flops": flops, "flops_total": total, "seconds": round(secs, 1), "dir": str(d)})
    return {"name": cfg.name, "seed": cfg.seed, "rounds": cfg.rounds, "rounds_from": cfg.rounds_from,
            "rows": rows}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e4 else f"{v:.3f}"
    return str(v)


def to_markdown(table: dict) -> str:
    cols = ["round", *METRICS, "train_examples", "flops", "flops_total", "seconds"]
    lines = [f"# rounds: {table['name']} (seed {table['seed']}, {table['rounds']} rounds, "
             f"each trained from {table['rounds_from']})", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table["rows"]:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    lines += ["", "Round 0 is the base model. flops: the round's data + training (generate, judge, "
              "dataset, train; thinksafe.compute); flops_total: rounds 1..r together. Evaluation apart.", ""]
    return "\n".join(lines)

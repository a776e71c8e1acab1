"""The ordered stages of one run. A finished stage (same config) is skipped on rerun; an
unfinished one resumes from what it already wrote."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from thinksafe.config import RunConfig, to_dict
from thinksafe.errors import ConfigError
from thinksafe.io import iter_jsonl, write_json, write_text

STAGES = ["generate", "judge", "dataset", "train", "evaluate", "report"]


def prepare_run_dir(cfg: RunConfig, force: bool = False) -> Path:
    """Create the run folder; refuse to mix outputs of two different configs in one folder."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    identity = to_dict(cfg)
    identity["generate"]["shard"] = "0/1"      # shards of one run share its folder
    text = yaml.safe_dump(identity, sort_keys=False)
    if saved.exists() and saved.read_text() != text and not force:
        raise ConfigError(f"{run_dir} holds a run with a different config (see {saved}); "
                          "choose another --out, or pass --force to start it over")
    if saved.exists() and saved.read_text() != text and force:
        import shutil
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    write_text(saved, text)
    return run_dir


def _manifest(run_dir: Path) -> dict:
    import json
    p = run_dir / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {"stages": {}}


def record_stage(run_dir: Path, stage: str, summary: dict, cfg: RunConfig | None = None) -> None:
    m = _manifest(run_dir)
    m["stages"][stage] = {"summary": summary, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:            # compute accounting (thinksafe.compute); never fails the stage itself
        from thinksafe import compute
        m["stages"][stage]["compute"] = compute.for_run(stage, summary, run_dir, cfg)
        m["compute_total"] = compute.total(m["stages"])
    except Exception as e:      # noqa: BLE001 - recorded, not hidden
        m["stages"][stage]["compute"] = {"error": f"{type(e).__name__}: {e}"}
    write_json(run_dir / "manifest.json", m)


def stage_done(run_dir: Path, stage: str) -> dict | None:
    return _manifest(run_dir)["stages"].get(stage, {}).get("summary")


def run_stage(stage: str, cfg: RunConfig, run_dir: Path, show: bool = True) -> dict:
    from thinksafe.stages import dataset, generate, grpo, judge, train
    if stage == "evaluate":
        return run_evaluate(cfg, run_dir, show)
    if stage == "report":
        return run_report(cfg, run_dir, show)
    mod = {"generate": generate, "judge": judge, "dataset": dataset, "train": train, "grpo": grpo}[stage]
    summary = mod.run(cfg, run_dir, show=show)
    key = stage if cfg.generate.shard == "0/1" or stage != "generate" else f"generate[{cfg.generate.shard}]"
    record_stage(run_dir, key, summary, cfg)
    return summary


def run_evaluate(cfg: RunConfig, run_dir: Path, show: bool = True) -> dict:
    from thinksafe.stages.evaluate import evaluate_model
    models = {"base": evaluate_model(cfg, run_dir, "base", None, show)}
    adapter, full = run_dir / "adapter", run_dir / "model"
    trained = None
    if (adapter / "adapter_config.json").exists():
        trained = (cfg, str(adapter))
    elif (full / "config.json").exists():          # train.method: full
        from dataclasses import replace
        trained = (replace(cfg, model=replace(cfg.model, path=str(full))), None)
    if trained:
        models["thinksafe"] = evaluate_model(trained[0], run_dir, "thinksafe", trained[1], show)
        # done only once the trained model was evaluated too: an evaluation of the base alone
        # (before training) must not make `thinksafe run` skip this stage later
        record_stage(run_dir, "evaluate", {k: _eval_summary(m) for k, m in models.items()}, cfg)
    return models


def _eval_summary(m: dict) -> dict:
    """The flat numbers of one model's metrics, with each real benchmark's headline rate."""
    from thinksafe.stages.report import headline
    out = {kk: v for kk, v in m.items() if not isinstance(v, dict)}
    out.update({name: headline(b) for name, b in (m.get("benchmarks") or {}).items()})
    return out


def run_report(cfg: RunConfig, run_dir: Path, show: bool = True, paper_model: str | None = None) -> dict:
    """summary.json, report.md (+ summary.csv for the real benchmarks) and pareto.png in run_dir."""
    from thinksafe.stages.report import report_run
    return report_run(cfg, run_dir, show, paper_model)


def run_all(cfg: RunConfig, show: bool = True, force: bool = False, log=print) -> dict:
    if cfg.generate.shard != "0/1":
        raise ConfigError("generate.shard is for `thinksafe generate` (one process per shard); "
                          "`run` generates everything, then judges the merged shards")
    run_dir = prepare_run_dir(cfg, force)
    results = {}
    for stage in STAGES:
        done = stage_done(run_dir, stage)
        if done is not None and stage != "report":
            log(f"[{stage}] already done in {run_dir}, skipped")
            results[stage] = done
            continue
        t0 = time.time()
        results[stage] = run_stage(stage, cfg, run_dir, show)
        log(f"[{stage}] done in {time.time() - t0:.1f}s")
    return results


def generated_count(run_dir: Path) -> int:
    return sum(1 for _ in iter_jsonl(run_dir / "generated.jsonl", appended=True))

"""dataset: keep complete, guard-safe samples as (original prompt, response); count every drop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.families import get_family
from thinksafe.io import iter_jsonl, write_json, write_jsonl
from thinksafe.judging import drop_reason
from thinksafe.types import Record

INPUT, OUTPUT, STATS = "judged.jsonl", "sft.jsonl", "dataset_stats.json"


def build(records: Iterable[Record], overlaps=None, thinks: bool = True) -> tuple[list[dict], dict]:
    """Keep what passes ``drop_reason``; ``overlaps(prompt)`` marks evaluation overlap (dropped too).
    ``records`` is consumed once (a generator streaming judged.jsonl is fine)."""
    kept, drops, by_label = [], Counter(), Counter()
    by_group: dict[str, Counter] = {}
    for r in records:
        by_label[r.label] += 1
        reason = drop_reason(r, thinks)
        if reason is None and overlaps is not None and overlaps(r.prompt):
            reason = "eval_overlap"
        group = r.label + (f"/{r.meta.get('category')}" if r.meta.get("category") else "")
        by_group.setdefault(group, Counter())["total"] += 1
        if reason:
            drops[reason] += 1
            by_group[group][reason] += 1
            continue
        by_group[group]["kept"] += 1
        kept.append({"id": r.id, "prompt": r.prompt, "response": r.completion.text, "label": r.label,
                     "category": r.meta.get("category") or "", "steering": r.steering or ""})
    kept_label = Counter(k["label"] for k in kept)
    stats = {"total": sum(by_label.values()), "kept": len(kept), "dropped": dict(sorted(drops.items())),
             "acceptance": {lab: kept_label[lab] / n for lab, n in sorted(by_label.items())},
             "by_group": {g: dict(c) for g, c in sorted(by_group.items())}}
    return kept, stats


def eval_overlaps(cfg) -> tuple:
    """(``overlaps(prompt)`` against the evaluation prompts or None, what decontamination did)."""
    mode = cfg.dataset.decontaminate
    info: dict = {"enabled": bool(mode), "mode": "best_effort" if mode == "best_effort" else bool(mode)}
    if not mode:
        return None, info
    from thinksafe.decontam import Decontaminator, evaluation_prompts
    prompts, found = evaluation_prompts(cfg)
    info.update(ngram=cfg.dataset.ngram, eval_prompts=len(prompts), **found)
    return Decontaminator(prompts, cfg.dataset.ngram).overlaps, info


def read_judged(path: Path) -> Iterator[Record]:
    """The judged records, one per id, streamed: a later verdict for the same id wins (it judged the
    completion as it is now). Two passes over the file; only the ids stay in memory."""
    last: dict[str, int] = {}
    for i, d in enumerate(iter_jsonl(path, appended=True)):
        last[d["id"]] = i
    for i, d in enumerate(iter_jsonl(path, appended=True)):
        if last.get(d["id"]) == i:
            yield Record.from_json(d)


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    overlaps, decontam = eval_overlaps(cfg)
    kept, stats = build(read_judged(run_dir / INPUT), overlaps, get_family(cfg.model.family).thinks)      # only kept rows stay in memory
    if not stats["total"]:
        raise DataError(f"{run_dir / INPUT} is missing or empty; run `thinksafe judge` first")
    decontam["dropped"] = stats["dropped"].get("eval_overlap", 0)
    stats["decontamination"] = decontam
    if not kept:
        raise DataError(f"dataset: every sample was dropped ({stats['dropped']}); nothing to train on")
    write_jsonl(run_dir / OUTPUT, kept)
    write_json(run_dir / STATS, stats)
    from datasets import Dataset
    Dataset.from_list(kept).save_to_disk(str(run_dir / "sft_dataset"))
    return stats

"""Prompt sources -> Records: the organism world, the SafeChain schema, any JSONL/CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.types import Record, stable_id


def organism_records(seed: int, split: str, n_reasoning: int, n_harmful: int,
                     n_borderline: int) -> list[Record]:
    from thinksafe.organism import world
    out = []
    for i, p in enumerate(world.sample_prompts(seed, split, n_reasoning, n_harmful, n_borderline)):
        meta = {"kind": p.kind, "category": p.category, "form": p.form, "topic": p.topic,
                "answer": p.answer, "split": split}
        out.append(Record(stable_id("organism", split, seed, i, p.prompt), p.prompt, p.label,
                          f"organism/{split}", meta))
    return out


def _label(raw: str) -> str:
    raw = str(raw).lower()
    if "harmful" in raw and "unharmful" not in raw and "benign" not in raw:
        return "harmful"
    return "benign"


def read_rows(p: Path) -> list[dict]:
    """Rows of a .csv, .tsv, .json (a list) or .jsonl file; a bad row is a DataError naming it."""
    if p.suffix in (".csv", ".tsv"):
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if p.suffix == ".tsv" else ","))
    if p.suffix == ".json":
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise DataError(f"{p}: expected a JSON list of objects")
        return rows
    if p.suffix != ".jsonl":
        raise DataError(f"{p}: unknown prompt file type '{p.suffix}' (use .jsonl, .json, .csv or .tsv)")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{p}:{i + 1}: not valid JSON") from None
    return rows


def _row_record(where: str, i: int, row: dict, prompt_field: str, label_field: str,
                default_label: str | None, source: str, id_base: str) -> Record:
    """One prompt row -> Record; a missing / non-text prompt or a missing label is a DataError
    naming the row (unless ``default_label`` gives rows without a label one)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: row {i + 1} is not an object (got {type(row).__name__})")
    if prompt_field not in row:
        raise DataError(f"{where}: row {i + 1} has no field '{prompt_field}' "
                        f"(set prompts.prompt_field; fields: {', '.join(map(str, row))})")
    prompt = row[prompt_field]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: row {i + 1}: '{prompt_field}' must be non-empty text, got {prompt!r:.60}")
    raw = row.get(label_field)
    if raw is None or raw == "":
        if default_label is None:
            raise DataError(f"{where}: row {i + 1} has no label field '{label_field}' (fields: "
                            f"{', '.join(map(str, row))}); set prompts.label_field, or "
                            "prompts.default_label: harmful | benign for rows without one")
        label = default_label
    else:
        label = _label(raw)
    return Record(stable_id(id_base, i, prompt), prompt, label, source, {"category": row.get("category")})


def file_records(path: str | Path, prompt_field: str, label_field: str,
                 default_label: str | None = None) -> list[Record]:
    """A SafeChain-schema (or mapped) JSONL/JSON/CSV file: prompt in ``prompt_field``; the row is
    harmful if ``label_field`` contains "harmful" (vanilla_harmful, adversarial_harmful, ...). A
    row without ``label_field`` is an error unless ``default_label`` is given."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt file not found: {p}")
    rows = read_rows(p)
    if not rows:
        raise DataError(f"{p}: no prompts in the file")
    return [_row_record(str(p), i, row, prompt_field, label_field, default_label, p.name, p.name)
            for i, row in enumerate(rows)]


def hub_records(dataset_id: str, prompt_field: str, label_field: str, split: str = "train",
                default_label: str | None = None) -> list[Record]:
    """A Hugging Face dataset (e.g. UWNSL/SafeChain); HF_HUB_OFFLINE=1 uses the local cache only."""
    from datasets import load_dataset
    try:
        ds = load_dataset(dataset_id, split=split)
    except Exception as e:   # network, gating, missing cache: one clear line
        raise DataError(f"could not load hub dataset '{dataset_id}' ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); download it or give a local file as prompts.source") from None
    out = [_row_record(dataset_id, i, row, prompt_field, label_field, default_label, dataset_id, dataset_id)
           for i, row in enumerate(ds)]
    if not out:
        raise DataError(f"{dataset_id}: no prompts in the dataset")
    return out


def load_prompts(cfg) -> list[Record]:
    """prompts.source: "organism", "hf:<dataset id>", or a .jsonl/.json/.csv/.tsv file;
    ``prompts.limit``: a seeded subset of that many (in the source's order)."""
    pc = cfg.prompts
    if pc.source == "organism":
        records = organism_records(cfg.seed, "train", pc.n_reasoning, pc.n_harmful, pc.n_borderline)
    elif pc.source.startswith("hf:"):
        records = hub_records(pc.source[3:], pc.prompt_field, pc.label_field,
                              default_label=getattr(pc, "default_label", None))
    else:
        records = file_records(pc.source, pc.prompt_field, pc.label_field, getattr(pc, "default_label", None))
    return subset(records, getattr(pc, "limit", None), cfg.seed)


def subset(records: list[Record], limit: int | None, seed: int) -> list[Record]:
    """``limit`` records drawn with ``seed`` (the same ones for the same seed), in their order."""
    if limit is None or limit >= len(records):
        return records
    import random
    keep = sorted(random.Random(f"prompts.limit/{seed}").sample(range(len(records)), limit))
    return [records[i] for i in keep]

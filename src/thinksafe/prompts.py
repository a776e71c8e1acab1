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


def file_records(path: str | Path, prompt_field: str, label_field: str) -> list[Record]:
    """A SafeChain-schema (or mapped) JSONL/JSON/CSV file: prompt in ``prompt_field``; the row is
    harmful if ``label_field`` contains "harmful" (vanilla_harmful, adversarial_harmful, ...)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt file not found: {p}")
    rows = read_rows(p)
    out = []
    for i, row in enumerate(rows):
        if prompt_field not in row:
            raise DataError(f"{p}: row {i + 1} has no field '{prompt_field}' "
                            f"(set prompts.prompt_field; fields: {', '.join(row)})")
        label = _label(row.get(label_field, "benign"))
        out.append(Record(stable_id(p.name, i, row[prompt_field]), row[prompt_field], label, p.name,
                          {"category": row.get("category")}))
    return out


def hub_records(dataset_id: str, prompt_field: str, label_field: str, split: str = "train") -> list[Record]:
    """A Hugging Face dataset (e.g. UWNSL/SafeChain); HF_HUB_OFFLINE=1 uses the local cache only."""
    from datasets import load_dataset
    try:
        ds = load_dataset(dataset_id, split=split)
    except Exception as e:   # network, gating, missing cache: one clear line
        raise DataError(f"could not load hub dataset '{dataset_id}' ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); download it or give a local file as prompts.source") from None
    out = []
    for i, row in enumerate(ds):
        if prompt_field not in row:
            raise DataError(f"{dataset_id}: no field '{prompt_field}' (fields: {', '.join(row)})")
        out.append(Record(stable_id(dataset_id, i, row[prompt_field]), row[prompt_field],
                          _label(row.get(label_field, "benign")), dataset_id, {"category": row.get("category")}))
    return out


def load_prompts(cfg) -> list[Record]:
    """prompts.source: "organism", "hf:<dataset id>", or a .jsonl/.json/.csv/.tsv file."""
    pc = cfg.prompts
    if pc.source == "organism":
        return organism_records(cfg.seed, "train", pc.n_reasoning, pc.n_harmful, pc.n_borderline)
    if pc.source.startswith("hf:"):
        return hub_records(pc.source[3:], pc.prompt_field, pc.label_field)
    return file_records(pc.source, pc.prompt_field, pc.label_field)

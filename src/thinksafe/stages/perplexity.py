"""perplexity: how far an SFT set is from a model's own distribution (the paper's Fig. 8).

``exp(mean NLL)`` of the RESPONSE tokens of each (prompt, response) row under a model (+ optional
LoRA adapter), with exactly the training stage's masking (``stages.train.tokenize_example``: the
chat template's generation prompt for the prompt, then the response and EOS; only response tokens
count). Self-generated data (ThinkSafe) should sit lowest.

Output: one JSONL row per example (index, id, response tokens, summed NLL, mean NLL, perplexity)
and a summary: the token-weighted perplexity ``exp(sum NLL / sum tokens)`` (the headline), the mean
of per-example perplexities, and counts of examples skipped (tokenization) or cut (``max_length``).
"""

from __future__ import annotations

import math
import time
from array import array
from pathlib import Path

from thinksafe.errors import DataError
from thinksafe.io import read_jsonl, write_json, write_jsonl


BASE_OUT = "sft.ppl.base.jsonl"


def run(cfg, run_dir: Path, show: bool = True) -> dict:
    """The ``perplexity`` stage (compare's rows): ``sft.jsonl``'s responses under the base model,
    written to ``sft.ppl.base.jsonl`` and its summary."""
    run_dir = Path(run_dir)
    return perplexity(run_dir / "sft.jsonl", cfg.model.path, family=cfg.model.family, out=run_dir / BASE_OUT,
                      max_length=cfg.train.max_length, dtype=cfg.model.dtype, device=cfg.model.device, show=show)


def default_out(data: Path, model: str, adapter: str | None = None) -> Path:
    """``<data stem>.ppl.<model>[.<adapter>].jsonl`` next to the data file."""
    def slug(s: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(str(s).rstrip("/")).name)
    tag = slug(model) + (f".{slug(adapter)}" if adapter else "")
    return data.with_name(f"{data.stem}.ppl.{tag}.jsonl")


def summary_path(out: Path) -> Path:
    return out.with_name(out.name[:-len(".jsonl")] + ".summary.json" if out.name.endswith(".jsonl")
                         else out.name + ".summary.json")


def read_pairs(data: Path, prompt_field: str = "prompt", response_field: str = "response",
               limit: int | None = None) -> list[dict]:
    rows = read_jsonl(data)
    if not rows:
        raise DataError(f"{data} is missing or empty (expected JSONL rows with "
                        f"'{prompt_field}' and '{response_field}', like a run's sft.jsonl)")
    for i, r in enumerate(rows):
        for k in (prompt_field, response_field):
            if not isinstance(r.get(k), str):
                raise DataError(f"{data}:{i + 1}: no text field '{k}' (fields: {', '.join(r)})")
    return rows[:limit] if limit is not None else rows


def response_nll(model, batch: list[dict], pad_id: int, chunk_size: int = 512) -> list[tuple[float, int]]:
    """(summed NLL, number of response tokens) per example; examples are input_ids + labels with
    -100 on the prompt, right-padded here.

    No ``seq x vocab`` logits: the decoder's final hidden states go through the LM head in chunks of
    ``chunk_size`` response positions (``trainers.loss.chunked_cross_entropy``, fp32 log-sum-exp),
    and prompt / padding positions never reach the head at all."""
    import torch

    from thinksafe.trainers.loss import causal_lm_parts, chunked_cross_entropy
    width = max(len(e["input_ids"]) for e in batch)
    dev = next(model.parameters()).device
    ids = torch.tensor([list(e["input_ids"]) + [pad_id] * (width - len(e["input_ids"])) for e in batch],
                       device=dev)
    labels = torch.tensor([list(e["labels"]) + [-100] * (width - len(e["labels"])) for e in batch], device=dev)
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch],
                        device=dev)
    decoder, head = causal_lm_parts(model)
    out = []
    with torch.no_grad():
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        for b in range(len(batch)):
            n = int((labels[b, 1:] != -100).sum())
            nll = chunked_cross_entropy(hidden[b:b + 1], head.weight, labels[b:b + 1], chunk_size=chunk_size,
                                        reduction="sum") if n else torch.zeros(())
            out.append((float(nll), n))
    return out


def perplexity(data: str | Path, model: str, adapter: str | None = None, family: str = "generic",
               out: str | Path | None = None, batch_size: int = 8, max_length: int | None = None,
               limit: int | None = None, dtype: str = "auto", device: str = "auto",
               prompt_field: str = "prompt", response_field: str = "response",
               show: bool = True) -> dict:
    """Perplexity of ``data``'s responses under ``model``; writes the per-example JSONL (``out``,
    default next to the data) and ``<out>.summary.json``; returns the summary."""
    from thinksafe.backends.hf import load_model, load_tokenizer
    from thinksafe.families import get_family
    from thinksafe.organism import resolve_model_path
    from thinksafe.runtime import progress_bar

    t0 = time.time()
    data = Path(data)
    fam = get_family(family)
    rows = read_pairs(data, prompt_field, response_field, limit)
    path = resolve_model_path(model)
    tok = load_tokenizer(path)
    net = load_model(path, adapter, dtype, device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    examples, per, skipped, cut = _tokenized(tok, rows, fam, prompt_field, response_field, max_length)
    meta = [(r.get("id"), r.get("label")) for r in rows]
    n_rows = len(rows)
    del rows                                 # the texts are no longer needed
    order = sorted(examples, key=lambda x: len(x[1]["input_ids"]))
    with progress_bar("perplexity", len(order), show) as advance:
        for start in range(0, len(order), max(batch_size, 1)):
            part = order[start:start + batch_size]
            for (i, ex), (nll, n) in zip(part, response_nll(net, [e for _, e in part], pad_id)):
                mean = nll / n if n else float("nan")
                per[i] = {"index": i, "id": meta[i][0], "label": meta[i][1],
                          "tokens": n, "nll": nll, "mean_nll": mean, "perplexity": math.exp(mean)}
            advance(len(part))
    summary = {"data": str(data), "model": model, "adapter": adapter, "family": fam.name, "examples": n_rows,
               **_totals([p for p in per if p and "perplexity" in p], skipped, cut),
               "input_tokens": sum(len(ex["input_ids"]) for _, ex in examples),
               "seconds": round(time.time() - t0, 1)}
    out = Path(out) if out is not None else default_out(data, model, adapter)
    write_jsonl(out, per)
    summary["out"] = str(out)
    write_json(summary_path(out), summary)
    return summary


def _tokenized(tok, rows: list[dict], fam, prompt_field: str, response_field: str, max_length: int | None):
    """(examples as (index, compact ids and labels), per-row entries of the skipped ones, skipped
    (tokenization), cut (longer than ``max_length``)); with the training stage's masking."""
    from thinksafe.trainers.examples import tokenize_many
    examples, per = [], [None] * len(rows)
    skipped, cut = 0, 0
    for i, ex in tokenize_many(tok, rows, fam, prompt_field, response_field):
        r = rows[i]
        base = {"index": i, "id": r.get("id"), "label": r.get("label")}
        if isinstance(ex, str):          # the response does not survive tokenization
            skipped += 1
            per[i] = {**base, "skipped": ex}
            continue
        if max_length and len(ex["input_ids"]) > max_length:
            cut += 1
            per[i] = {**base, "skipped": f"longer than max_length={max_length}"}
            continue
        # 4 bytes a token (a list of ints is ~36): 40k long examples stay a few hundred MB
        examples.append((i, {"input_ids": array("i", ex["input_ids"]), "labels": array("i", ex["labels"])}))
    return examples, per, skipped, cut


def _totals(scored: list[dict], skipped: int, cut: int) -> dict:
    """The token-weighted perplexity (the headline), the mean of per-example ones, counts, and
    per label when there are several."""
    total_nll = sum(p["nll"] for p in scored)
    total_tok = sum(p["tokens"] for p in scored)
    out = {"scored": len(scored), "skipped": skipped, "too_long": cut, "response_tokens": total_tok,
           "mean_nll": total_nll / total_tok if total_tok else None,
           "perplexity": math.exp(total_nll / total_tok) if total_tok else None,
           "mean_example_perplexity": sum(p["perplexity"] for p in scored) / len(scored) if scored else None}
    by_label: dict[str, list] = {}
    for p in scored:
        by_label.setdefault(str(p.get("label")), []).append(p)
    if len(by_label) > 1:
        out["by_label"] = {k: math.exp(sum(p["nll"] for p in v) / sum(p["tokens"] for p in v))
                           for k, v in sorted(by_label.items()) if sum(p["tokens"] for p in v)}
    return out

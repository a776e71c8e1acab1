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
from pathlib import Path

from thinksafe.errors import DataError, TemplateError
from thinksafe.io import read_jsonl, write_json, write_jsonl


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


def response_nll(model, batch: list[dict], pad_id: int) -> list[tuple[float, int]]:
    """(summed NLL, number of response tokens) per example; examples are input_ids + labels with
    -100 on the prompt, right-padded here."""
    import torch
    width = max(len(e["input_ids"]) for e in batch)
    dev = next(model.parameters()).device
    ids = torch.tensor([e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in batch], device=dev)
    labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch], device=dev)
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch],
                        device=dev)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float()
    target = labels[:, 1:]
    logp = torch.log_softmax(logits, dim=-1)
    tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    valid = target != -100
    nll = -(tok * valid).sum(dim=1)
    return [(float(a), int(b)) for a, b in zip(nll.tolist(), valid.sum(dim=1).tolist())]


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
    from thinksafe.stages.train import tokenize_example

    t0 = time.time()
    data = Path(data)
    fam = get_family(family)
    rows = read_pairs(data, prompt_field, response_field, limit)
    path = resolve_model_path(model)
    tok = load_tokenizer(path)
    net = load_model(path, adapter, dtype, device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    examples, per = [], [None] * len(rows)
    skipped, cut = 0, 0
    for i, r in enumerate(rows):
        base = {"index": i, "id": r.get("id"), "label": r.get("label")}
        try:
            ex = tokenize_example(tok, r[prompt_field], r[response_field], fam)
        except TemplateError as e:
            skipped += 1
            per[i] = {**base, "skipped": str(e)}
            continue
        if max_length and len(ex["input_ids"]) > max_length:
            cut += 1
            per[i] = {**base, "skipped": f"longer than max_length={max_length}"}
            continue
        examples.append((i, ex))
    order = sorted(examples, key=lambda x: len(x[1]["input_ids"]))
    with progress_bar("perplexity", len(order), show) as advance:
        for start in range(0, len(order), max(batch_size, 1)):
            part = order[start:start + batch_size]
            for (i, ex), (nll, n) in zip(part, response_nll(net, [e for _, e in part], pad_id)):
                mean = nll / n if n else float("nan")
                per[i] = {"index": i, "id": rows[i].get("id"), "label": rows[i].get("label"),
                          "tokens": n, "nll": nll, "mean_nll": mean, "perplexity": math.exp(mean)}
            advance(len(part))
    scored = [p for p in per if p and "perplexity" in p]
    total_nll = sum(p["nll"] for p in scored)
    total_tok = sum(p["tokens"] for p in scored)
    summary = {
        "data": str(data), "model": model, "adapter": adapter, "family": fam.name,
        "examples": len(rows), "scored": len(scored), "skipped": skipped, "too_long": cut,
        "response_tokens": total_tok,
        "mean_nll": total_nll / total_tok if total_tok else None,
        "perplexity": math.exp(total_nll / total_tok) if total_tok else None,
        "mean_example_perplexity": sum(p["perplexity"] for p in scored) / len(scored) if scored else None,
        "seconds": round(time.time() - t0, 1),
    }
    by_label: dict[str, list] = {}
    for p in scored:
        by_label.setdefault(str(p.get("label")), []).append(p)
    if len(by_label) > 1:
        summary["by_label"] = {k: math.exp(sum(p["nll"] for p in v) / sum(p["tokens"] for p in v))
                               for k, v in sorted(by_label.items()) if sum(p["tokens"] for p in v)}
    out = Path(out) if out is not None else default_out(data, model, adapter)
    write_jsonl(out, per)
    summary["out"] = str(out)
    write_json(summary_path(out), summary)
    return summary

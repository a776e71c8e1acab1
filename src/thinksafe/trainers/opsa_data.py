"""OPSA's inputs (``train.objective: opsa``, the loop in ``thinksafe.stages.train``): the ``opsa``
distinct prompts of ``sft.jsonl`` with their labels (its responses are not
used), each prompt rendered twice — as it is (the student's input, the rollouts' prompt) and
inside ``opsa.context`` (the teacher's input; harmful prompts only with ``opsa.context_on:
harmful``, the default, and benign ones inside ``opsa.benign_context``) — and the rollouts' sampling."""

from __future__ import annotations

from thinksafe import steering


def teacher_text(context: str, prompt: str, label: str, context_on: str = "harmful",
                 benign_context: str = "none") -> str:
    """The teacher's prompt: ``prompt`` inside the privileged context (harmful prompts, or all with
    ``context_on: all``); a benign prompt inside ``benign_context`` (none: as it is)."""
    if label == "harmful" or context_on == "all":
        return steering.apply(context, prompt, "harmful")[0]
    template = steering.resolve_benign(benign_context)
    return prompt if template is None else template.replace("{prompt}", prompt)


def prompt_rows(rows: list[dict]) -> list[dict]:
    """Distinct prompts of sft.jsonl, first label wins, in file order."""
    seen: dict[str, str] = {}
    for r in rows:
        if r.get("prompt") and r["prompt"] not in seen:
            seen[r["prompt"]] = r.get("label") or "benign"
    return [{"prompt": p, "label": lab} for p, lab in seen.items()]


def build_examples(tok, rows: list[dict], family, o, max_length: int) -> tuple[list[dict], int]:
    """(examples with prompt_ids / teacher_ids / is_harmful, prompts dropped as too long)."""
    from thinksafe.runtime import render_prompt
    out, dropped = [], 0
    for r in rows:
        p = tok(render_prompt(tok, r["prompt"], family), add_special_tokens=False).input_ids
        t = tok(render_prompt(tok, teacher_text(o.context, r["prompt"], r["label"], o.context_on, o.benign_context), family),
                add_special_tokens=False).input_ids
        if max(len(p), len(t)) >= max_length:
            dropped += 1
            continue
        out.append({"prompt_ids": p, "teacher_ids": t, "is_harmful": int(r["label"] == "harmful")})
    return out, dropped


def sampling_kwargs(cfg, family) -> dict:
    o = cfg.opsa
    temperature = family.temperature if o.temperature is None else o.temperature
    top_k = family.top_k if o.top_k is None else o.top_k
    out = {"max_new_tokens": o.max_new_tokens or cfg.generate.max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        out.update(temperature=temperature, top_p=family.top_p if o.top_p is None else o.top_p,
                   top_k=top_k if top_k > 0 else None)
    return out

"""Training examples from (prompt, response) rows: the chat template's generation prompt for the prompt,
the response (+ EOS) as the target, labels -100 on the prompt; what happens to long ones is counted.
Used by ``train``, ``opsa``, ``grpo`` and ``perplexity`` alike (nothing here imports a stage)."""

from __future__ import annotations

from thinksafe.errors import ConfigError, TemplateError
from thinksafe.families import Family
from thinksafe.runtime import render_prompt
from thinksafe.validation import TRUNCATIONS


def tokenize_example(tokenizer, prompt: str, response: str, family: Family) -> dict:
    """input_ids + labels for one example; fails loudly if the response does not survive."""
    prompt_text = render_prompt(tokenizer, prompt, family)
    target = response
    if family.prefill and prompt_text.endswith(family.prefill) and target.startswith(family.prefill):
        target = target[len(family.prefill):]   # the generation prompt already holds it
    p_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    r_ids = tokenizer(target, add_special_tokens=False).input_ids
    if tokenizer.decode(r_ids) != target:
        raise TemplateError("the response does not survive tokenization unchanged: "
                            f"{target[:60]!r}...")
    if "</think>" in response and "</think>" not in tokenizer.decode(p_ids + r_ids):
        raise TemplateError("the rendered training text lost the reasoning trace")
    r_ids = r_ids + [tokenizer.eos_token_id]
    return {"input_ids": p_ids + r_ids, "labels": [-100] * len(p_ids) + r_ids}


def tokenize_many(tokenizer, rows: list[dict], family: Family, prompt_field: str = "prompt",
                  response_field: str = "response", block: int = 256):
    """:func:`tokenize_example` for many rows, fast: each prompt is rendered once (samples of one
    prompt share it), prompts and responses are tokenized in batched tokenizer calls and the
    round-trip check decodes each response once, also batched. Yields ``(index, example)`` or
    ``(index, reason)`` (a str) for a row whose response does not survive tokenization."""
    rendered: dict[str, str] = {}
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        prompts, targets = [], []
        for r in part:
            p = r[prompt_field]
            text = rendered.get(p)
            if text is None:
                text = rendered[p] = render_prompt(tokenizer, p, family)
            target = r[response_field]
            if family.prefill and text.endswith(family.prefill) and target.startswith(family.prefill):
                target = target[len(family.prefill):]   # the generation prompt already holds it
            prompts.append(text)
            targets.append(target)
        p_ids = tokenizer(prompts, add_special_tokens=False).input_ids
        r_ids = tokenizer(targets, add_special_tokens=False).input_ids
        back = tokenizer.batch_decode(r_ids)
        for j, r in enumerate(part):
            if back[j] != targets[j]:
                yield start + j, f"the response does not survive tokenization unchanged: {targets[j][:60]!r}..."
            elif "</think>" in r[response_field] and "</think>" not in prompts[j] + back[j]:
                yield start + j, "the rendered training text lost the reasoning trace"
            else:
                ids = r_ids[j] + [tokenizer.eos_token_id]
                yield start + j, {"input_ids": p_ids[j] + ids, "labels": [-100] * len(p_ids[j]) + ids}


def tokenize_rows_stats(tokenizer, rows: list[dict], family: Family, max_length: int,
                        truncation: str = "drop") -> tuple[list[dict], dict]:
    """Tokenized examples (input_ids, labels, is_benign) and what happened to the long ones.

    ``drop``: an example over ``max_length`` is left out. ``cut``: it keeps its first ``max_length``
    tokens (it loses the end of its response, EOS included); one whose prompt alone fills
    ``max_length`` has nothing left to learn and is dropped. An example whose response does not
    survive tokenization unchanged is dropped too (``dropped_untokenizable``, first reason in
    ``untokenizable_example``). Every case is counted."""
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"train.truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
    out = []
    stats = {"truncation": truncation, "dropped_too_long": 0, "cut_too_long": 0, "cut_tokens": 0,
             "dropped_untokenizable": 0}
    for i, ex in tokenize_many(tokenizer, rows, family):
        if isinstance(ex, str):
            stats["dropped_untokenizable"] += 1
            stats.setdefault("untokenizable_example", f"row {i + 1}: {ex}")
            continue
        n = len(ex["input_ids"])
        if n > max_length:
            if truncation == "drop" or all(x == -100 for x in ex["labels"][1:max_length]):
                stats["dropped_too_long"] += 1
                continue
            ex = {"input_ids": ex["input_ids"][:max_length], "labels": ex["labels"][:max_length]}
            stats["cut_too_long"] += 1
            stats["cut_tokens"] += n - max_length
        ex["is_benign"] = int(rows[i].get("label") != "harmful")
        out.append(ex)
    return out, stats


def tokenize_rows(tokenizer, rows: list[dict], family: Family, max_length: int,
                  truncation: str = "drop") -> tuple[list[dict], int]:
    out, stats = tokenize_rows_stats(tokenizer, rows, family, max_length, truncation)
    return out, stats["dropped_too_long"]

"""Shared guard helpers."""

from __future__ import annotations

from collections.abc import Callable


def shorten_inside_response(fill: Callable[[str], str], tokenizer, response: str,
                            limit: int | None) -> tuple[str | None, int]:
    """Render ``fill(response)``; if it is over ``limit`` tokens, cut tokens from the END of the
    response (never from the guard's instruction) until it fits. Returns (text, tokens cut); the
    text is None when even an empty response does not fit."""
    def n_tokens(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False).input_ids)

    text = fill(response)
    if not limit:
        return text, 0
    n = n_tokens(text)
    if n <= limit:
        return text, 0
    r_ids = tokenizer(response, add_special_tokens=False).input_ids
    keep = len(r_ids) - (n - limit)
    while keep > 0:
        text = fill(tokenizer.decode(r_ids[:keep], skip_special_tokens=False))
        over = n_tokens(text) - limit
        if over <= 0:
            return text, len(r_ids) - keep
        keep -= over       # token boundaries can merge differently; cut the overshoot too
    text = fill("")
    return (text if n_tokens(text) <= limit else None), len(r_ids)

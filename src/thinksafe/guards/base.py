"""Shared guard helpers."""

from __future__ import annotations

from collections.abc import Callable


def shorten_inside_response(fill: Callable[[str], str], tokenizer, response: str,
                            limit: int | None) -> tuple[str | None, int]:
    """Render ``fill(response)``; if it is over ``limit`` tokens, cut tokens from the END of the
    response (never from the guard's instruction) until it fits. Returns (text, tokens cut); the
    text is None when even an empty response does not fit."""
    text, cut, _ = fit_inside_response(fill, tokenizer, response, limit)
    return text, cut


def fit_inside_response(fill: Callable[[str], str], tokenizer, response: str,
                        limit: int | None) -> tuple[str | None, int, int]:
    """:func:`shorten_inside_response` plus the number of tokens of the returned text (0 when the
    text is None), counted while fitting: the guard's compute accounting needs no second pass."""
    def n_tokens(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False).input_ids)

    text = fill(response)
    n = n_tokens(text)
    if not limit or n <= limit:
        return text, 0, n
    r_ids = tokenizer(response, add_special_tokens=False).input_ids
    keep = len(r_ids) - (n - limit)
    while keep > 0:
        text = fill(tokenizer.decode(r_ids[:keep], skip_special_tokens=False))
        n = n_tokens(text)
        if n <= limit:
            return text, len(r_ids) - keep, n
        keep -= n - limit  # token boundaries can merge differently; cut the overshoot too
    text = fill("")
    n = n_tokens(text)
    return (text, len(r_ids), n) if n <= limit else (None, len(r_ids), 0)

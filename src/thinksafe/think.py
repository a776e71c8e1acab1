"""The one rule for reading a response's reasoning block: the reasoning is everything before the
LAST ``</think>`` (a leading ``<think>`` removed), the final answer everything after it; a response
without ``</think>`` has no final answer. Scoring, evaluation, the organism's oracle and the
baselines all split here (Qwen3's own chat template also keeps the text after the last tag)."""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def final_answer(text: str | None) -> str | None:
    """The raw text after the last ``</think>``, or None when the reasoning never closed."""
    text = text or ""
    return text.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else None


def split_response(text: str | None) -> tuple[str, str | None]:
    """(reasoning, final answer), both stripped; without ``</think>`` all of it is reasoning and
    the answer is None."""
    text = text or ""
    answer = final_answer(text)
    trace = (text.rsplit(THINK_CLOSE, 1)[0] if answer is not None else text).strip()
    if trace.startswith(THINK_OPEN):
        trace = trace[len(THINK_OPEN):].strip()
    return trace, (answer.strip() if answer is not None else None)

"""Answer checking for the reasoning benchmarks.

The answer is read ONLY from the text after the last ``</think>``: a response without ``</think>``
has no answer and is wrong with ``reason="no_think_close"`` (unlike SkyThought, which scans the whole
text, reasoning included). Every scorer returns ``{"correct", "pred", "gold", "reason"}`` where
reason is one of ``ok``, ``wrong``, ``no_think_close``, ``no_boxed``, ``no_number``, ``no_letter``.
"""

from __future__ import annotations

import re
import threading

from thinksafe.errors import MissingDependency
from thinksafe.think import final_answer

_BOX_CMDS = ("\\boxed", "\\fbox")
_NUM = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_FINAL = re.compile(r"final answer is", re.IGNORECASE)
_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def _result(correct: bool, pred, gold, reason: str | None = None) -> dict:
    return {"correct": bool(correct), "pred": pred, "gold": gold,
            "reason": reason or ("ok" if correct else "wrong")}


# ----------------------------------------------------------------------------- \boxed{}
def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept), or of
    ``\\boxed 5``; None when there is none or its braces never close."""
    start = max(text.rfind(c) for c in _BOX_CMDS)
    if start < 0:
        return None
    i = start + len("\\boxed" if text.startswith("\\boxed", start) else "\\fbox")
    rest = text[i:]
    if not rest.lstrip().startswith("{"):
        m = re.match(r"\s+([^\s$]+)", rest)                 # "\boxed 5"
        return m.group(1) if m else None
    i += len(rest) - len(rest.lstrip())
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


# ----------------------------------------------------------------------------- math
def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise MissingDependency("math answer checking needs math-verify: "
                                "pip install 'math-verify>=0.9'") from None
    return math_verify


def _mv_equal(pred: str, gold: str) -> bool:
    mv = _math_verify()
    # math_verify's timeouts use SIGALRM, which only works on the main thread.
    t = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        g = mv.parse(f"${gold.strip('$')}$", parsing_timeout=t)
        p = mv.parse(f"${pred.strip('$')}$", parsing_timeout=t)
        return bool(g and p and mv.verify(g, p, timeout_seconds=t))
    except Exception:  # a parser crash on odd LaTeX is "not shown equal", never fatal
        return False


def normalize_math(s: str) -> str:
    """A plain-text normal form for the fallback comparison."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    s = re.sub(r"\\(left|right|!|,|;|:|displaystyle)", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\^\{?\\circ\}?|\\%|%|\\\$|\\degree", "", s)
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s


def _as_number(s: str) -> float | None:
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m and int(m.group(2)) != 0:
        return int(m.group(1)) / int(m.group(2))
    try:
        return float(s)
    except ValueError:
        return None


def math_equal(pred: str, gold: str) -> bool:
    """Equal by math_verify (symbolic/numeric), or by the normalised text or number."""
    if _mv_equal(pred, gold):
        return True
    a, b = normalize_math(pred), normalize_math(gold)
    if a == b and a:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and abs(x - y) <= 1e-6 * max(1.0, abs(y))


def _score(response: str, gold, extract, equal, missing: str) -> dict:
    """The shared shape of every scorer: answer after ``</think>`` -> extract -> compare."""
    ans = final_answer(response)
    if ans is None:
        return _result(False, None, gold, "no_think_close")
    pred = extract(ans)
    if pred is None:
        return _result(False, None, gold, missing)
    return _result(equal(pred), pred, gold)


def score_math(response: str, gold: str) -> dict:
    """AIME/MATH: the last ``\\boxed{}`` after ``</think>`` against ``gold``."""
    return _score(response, gold, last_boxed, lambda p: math_equal(p, str(gold)), "no_boxed")


# ----------------------------------------------------------------------------- numbers
def parse_number(s: str) -> float | None:
    """A number from ``s`` with ``$`` and thousands commas removed; None if it is not one."""
    s = s.replace("$", "").replace(",", "").strip()
    try:
        return float(s)
    except ValueError:
        return None


def extract_number(text: str) -> str | None:
    """The number after the last "The final answer is", else the last number in ``text``."""
    text = text.replace("$", "")
    finals = list(_FINAL.finditer(text))
    if finals:
        m = _NUM.search(text, finals[-1].end())
        if m:
            return m.group(0).replace(",", "")
    nums = _NUM.findall(text)
    return nums[-1].replace(",", "") if nums else None


def score_number(response: str, gold: str | float) -> dict:
    """GSM8K: the final-answer number after ``</think>`` compared numerically with ``gold``."""
    g = parse_number(str(gold))

    def equal(pred: str) -> bool:
        p = parse_number(pred)
        return g is not None and p is not None and abs(p - g) <= 1e-6 * max(1.0, abs(g))
    return _score(response, gold, extract_number, equal, "no_number")


# ----------------------------------------------------------------------------- letters
def extract_letter(text: str) -> str | None:
    """A-D from the last ``\\boxed{}`` if it holds one, else the last standalone A-D."""
    boxed = last_boxed(text)
    if boxed is not None:
        m = _LETTER.search(re.sub(r"\\text(bf)?\{([^{}]*)\}", r"\2", boxed))
        if m:
            return m.group(1)
    found = _LETTER.findall(text)
    return found[-1] if found else None


def score_letter(response: str, gold: str) -> dict:
    """GPQA: the chosen letter after ``</think>`` against the correct letter."""
    return _score(response, gold, extract_letter, lambda p: p == gold.strip().upper(), "no_letter")

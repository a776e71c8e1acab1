"""The paper's published numbers (arXiv 2601.23143 v4; Tab1 Qwen3, Tab2 R1-Distill, Tab6/7 the
WildGuard-filtered ThinkSafe, Tab8 Qwen3-14B/32B, Tab9 SafePath retrained on ThinkSafe's prompts),
copied from ``shared/reference/paper_tables.md``.

Columns: HarmBench, StrongREJECT, WildJailbreak (harmful %, lower is better), XSTest (refusal %
on the 250 safe prompts, lower is better), Safety avg (mean of those four) | AIME24, GSM8K,
MATH500, GPQA-D (pass@1 % averaged over 8 samples), Reasoning avg. Values are as printed,
averages included: a few printed averages differ from the mean of their four columns (most
visibly Qwen3-4B DirectRefusal 29.80 vs 26.11 and ThinkSafe+WildGuard 5.68 vs 4.86; others by
0.1-0.2), see ``NOTES`` and ``column_mean``.
"""

from __future__ import annotations

import re

SAFETY = ("HarmBench", "StrongREJECT", "WildJailbreak", "XSTest")
REASONING = ("AIME24", "GSM8K", "MATH500", "GPQA-D")
COLUMNS = (*SAFETY, "Safety avg", *REASONING, "Reasoning avg")

METHODS = {"In": "Initial", "DR": "DirectRefusal", "SC": "SafeChain", "ST": "STAR-1",
           "SP": "SafePath", "SK": "SafeKey", "TS": "ThinkSafe", "WG": "ThinkSafe+WildGuard",
           "SP*": "SafePath (ThinkSafe prompts)"}

# model -> rows "method  HB SR WJ XS SAvg | AIME GSM MATH GPQA RAvg"
_RAW = """
Qwen3-0.6B
In 68.44 66.45 52.80 5.20 48.22|10.42 72.51 71.73 25.13 44.95
DR 43.85 11.82 36.30 83.60 43.89|5.83 64.30 67.53 24.81 40.62
SC 58.64 72.84 49.60 0.00 45.20|4.58 68.68 62.42 23.74 39.86
ST 56.64 38.02 50.60 22.40 41.92|6.25 68.15 68.17 24.18 41.69
SP 67.61 60.06 52.80 4.40 46.22|7.92 71.26 71.77 26.07 44.26
SK 60.96 48.88 52.75 18.40 45.25|5.42 71.58 66.17 24.94 42.03
TS 40.37 33.87 37.95 6.40 29.65|9.58 72.36 70.65 23.30 43.97
WG 39.04 35.46 37.55 7.20 29.81|9.58 72.82 72.00 24.81 44.80
Qwen3-1.7B
In 52.66 36.10 51.10 1.20 35.27|44.58 84.31 88.85 41.73 64.87
DR 38.54 5.75 35.75 61.60 35.41|43.75 82.78 88.10 41.29 63.98
SC 47.34 57.51 43.85 1.60 37.58|34.58 85.29 85.72 38.13 60.93
ST 37.38 7.67 46.60 10.80 25.61|46.25 84.38 88.30 41.16 65.02
SP 54.15 36.42 49.30 1.20 35.27|43.33 84.33 88.32 42.42 64.60
SK 46.84 18.21 48.85 8.80 30.68|38.33 84.31 88.12 40.03 62.70
TS 28.74 9.58 29.20 2.00 17.38|44.17 83.80 89.05 40.53 64.39
WG 28.90 7.99 29.00 2.00 17.17|45.00 83.43 88.98 41.04 64.61
Qwen3-4B
In 38.21 8.31 43.00 0.80 22.58|67.50 84.69 93.43 52.27 74.47
DR 33.06 3.19 36.20 32.00 29.80|68.33 82.58 93.20 53.03 74.29
SC 43.69 41.21 39.65 2.00 31.64|62.08 89.59 93.03 51.01 73.93
ST 33.72 5.75 35.15 6.80 20.36|62.50 90.97 93.05 51.96 74.62
SP 37.71 7.35 42.45 1.60 22.28|72.08 84.45 93.33 53.54 75.85
SK 32.39 3.19 32.95 0.80 17.33|67.08 91.79 92.87 51.83 75.89
TS 9.63 0.32 7.45 2.80 5.05|73.33 88.06 93.53 53.79 77.18
WG 9.47 0.32 7.25 2.40 5.68|75.42 88.15 93.55 53.60 77.68
Qwen3-8B
In 35.05 4.47 38.35 0.40 19.57|74.17 85.28 94.18 50.69 76.08
DR 24.42 1.92 28.05 37.60 23.00|74.58 84.31 93.63 59.41 77.98
SC 41.20 38.95 36.42 1.20 29.44|70.00 92.98 93.53 58.21 78.68
ST 24.42 1.28 29.25 6.80 15.44|72.50 90.29 93.73 57.83 78.59
SP 35.22 6.71 39.45 1.20 20.64|74.58 84.89 93.85 61.24 78.64
SK 26.91 4.79 28.80 8.80 17.33|70.00 92.44 93.30 59.91 78.91
TS 9.14 0.32 7.35 1.20 4.50|72.92 88.00 93.10 59.67 78.50
WG 9.63 0.32 7.05 3.20 5.05|73.33 87.96 93.65 60.29 78.81
SP* 21.76 2.24 20.00 2.00 11.50|73.33 85.57 92.93 61.74 78.39
R1-Distill-Qwen-1.5B
In 67.28 82.11 51.55 0.00 50.23|21.25 82.42 79.45 31.94 53.77
DR 66.11 82.75 50.45 8.40 51.93|19.17 81.06 78.55 32.70 52.87
SC 59.30 76.68 46.95 0.40 45.73|24.17 80.47 81.25 28.28 53.54
ST 62.79 77.00 49.65 1.20 47.66|17.08 81.38 79.07 31.25 52.20
SP 65.28 82.43 51.80 0.40 49.98|24.17 82.37 79.57 32.51 54.66
SK 58.80 73.16 47.65 3.60 45.80|19.58 81.25 78.02 28.72 51.89
TS 52.99 74.12 40.50 1.20 42.20|32.92 82.58 82.50 31.19 57.30
WG 54.82 76.68 39.95 1.20 43.16|30.00 82.36 82.55 32.89 56.95
R1-Distill-Qwen-7B
In 56.98 63.58 53.15 1.20 43.73|49.58 90.32 90.18 46.65 69.18
DR 52.33 33.55 50.20 43.60 44.92|47.50 88.27 89.82 44.95 67.64
SC 51.00 54.63 45.85 0.40 37.97|49.17 89.75 91.50 46.78 69.30
ST 52.99 47.92 48.75 2.40 38.02|45.83 90.32 90.58 46.02 68.19
SP 55.15 64.86 52.65 0.00 43.16|52.08 89.71 90.62 46.15 69.64
SK 45.35 33.87 45.75 7.20 33.04|43.75 90.58 89.90 47.29 67.88
TS 40.20 41.85 35.40 0.40 29.46|51.25 90.10 91.90 45.20 69.61
WG 40.03 38.98 34.25 0.80 28.52|52.50 90.98 92.05 46.97 70.63
R1-Distill-Llama-8B
In 52.33 53.99 49.70 0.40 39.10|47.50 87.74 87.38 48.11 67.68
DR 32.39 0.64 32.60 50.00 28.91|40.00 83.26 85.00 43.50 62.94
SC 44.52 46.33 42.45 1.60 33.72|41.67 86.06 86.50 42.05 64.07
ST 21.26 3.51 17.60 12.00 13.59|40.42 87.28 86.65 43.69 64.51
SP 47.51 51.44 50.20 0.40 37.39|43.33 87.45 87.43 47.41 66.41
SK 32.72 11.82 30.85 8.00 20.85|35.83 87.41 85.80 42.49 62.88
TS 27.08 26.52 21.15 1.60 19.09|48.75 87.55 87.70 46.28 67.47
WG 27.24 26.20 22.00 1.60 19.26|45.42 87.62 86.82 45.14 66.25
Qwen3-14B
In 29.90 3.19 35.05 1.60 17.44|79.17 92.58 94.67 63.83 82.56
DR 21.59 0.64 23.15 35.20 20.15|77.08 92.69 94.47 62.82 81.77
SC 46.01 46.65 38.50 1.20 33.09|69.17 91.55 94.27 61.24 79.06
TS 6.31 0.00 3.45 2.40 3.04|77.50 93.20 94.27 63.51 82.12
Qwen3-32B
In 35.71 5.11 36.45 1.60 19.72|79.17 87.82 95.15 68.62 82.69
DR 18.44 0.32 21.05 39.20 19.75|79.58 87.51 95.03 67.36 82.37
SC 42.86 46.65 36.45 0.80 31.69|72.92 91.79 94.35 60.23 79.82
TS 10.47 0.32 7.15 4.40 5.58|79.58 89.13 94.95 67.74 82.85
"""

NOTES = {
    ("Qwen3-4B", "ThinkSafe+WildGuard"): "Safety avg 5.68 as printed; its four columns average 4.86",
    ("Qwen3-4B", "DirectRefusal"): "Safety avg 29.80 as printed; its four columns average 26.11",
    ("Qwen3-8B", "SafePath (ThinkSafe prompts)"): "Tab9: SafePath retrained on ThinkSafe's prompts",
    ("Qwen3-8B", "ThinkSafe"): "GPQA-D 59.67 in Tab1, 59.97 in Tab9",
}


def _parse(raw: str) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    model = None
    for line in raw.strip().splitlines():
        parts = line.replace("|", " ").split()
        if len(parts) == 1:
            model = parts[0]
            out[model] = {}
            continue
        code, values = parts[0], [float(x) for x in parts[1:]]
        if len(values) != len(COLUMNS) or model is None:
            raise ValueError(f"paper_numbers: bad row {line!r}")
        out[model][METHODS[code]] = dict(zip(COLUMNS, values))
    return out


PAPER: dict[str, dict[str, dict[str, float]]] = _parse(_RAW)
MODELS = tuple(PAPER)

# Hugging Face ids (lower-cased base names) of the paper's initial models.
_HF = {"qwen3-0.6b": "Qwen3-0.6B", "qwen3-1.7b": "Qwen3-1.7B", "qwen3-4b": "Qwen3-4B",
       "qwen3-8b": "Qwen3-8B", "qwen3-14b": "Qwen3-14B", "qwen3-32b": "Qwen3-32B",
       "deepseek-r1-distill-qwen-1.5b": "R1-Distill-Qwen-1.5B",
       "deepseek-r1-distill-qwen-7b": "R1-Distill-Qwen-7B",
       "deepseek-r1-distill-llama-8b": "R1-Distill-Llama-8B"}


def resolve_model(name: str | None) -> str | None:
    """A paper model name from a name or HF id ("Qwen/Qwen3-4B", "qwen3-4b", "R1-Distill-Qwen-7B",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"); None when it is not one of the paper's."""
    if not name:
        return None
    base = re.split(r"[/\\]", str(name).rstrip("/\\"))[-1].lower()
    for key in (base, f"deepseek-{base}"):
        if key in _HF:
            return _HF[key]
    for m in MODELS:
        if m.lower() == base:
            return m
    return None


def points(model: str) -> list[tuple[str, float, float]]:
    """(method, Safety avg, Reasoning avg) of one paper model, in table order."""
    return [(method, row["Safety avg"], row["Reasoning avg"]) for method, row in PAPER[model].items()]


def column_mean(model: str, method: str, group: str = "safety") -> float:
    """The mean of the four printed columns (the printed average may differ, see NOTES)."""
    cols = SAFETY if group == "safety" else REASONING
    row = PAPER[model][method]
    return sum(row[c] for c in cols) / len(cols)

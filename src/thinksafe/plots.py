"""Plots for the report: the safety-reasoning trade-off (``pareto.png``), matplotlib's Agg backend.

A Figure is drawn on its own Agg canvas (no pyplot, no global backend switch), so this works on
headless machines and inside other programs that use matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

Point = tuple[str, float, float]     # (label, x, y)


def _canvas(width: float = 7.0, height: float = 5.0):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from thinksafe.errors import MissingDependency
        raise MissingDependency("plots need matplotlib: pip install 'matplotlib>=3.8'") from None
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _frontier(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (higher is better on both), by x."""
    front = [p for p in points
             if not any(q[1] >= p[1] and q[2] >= p[2] and (q[1], q[2]) != (p[1], p[2]) for q in points)]
    return sorted(front, key=lambda p: p[1])


def pareto_plot(path: str | Path, points: Sequence[Point], reference: Sequence[Point] = (),
                title: str = "Safety vs reasoning", xlabel: str = "Reasoning avg (pass@1 %)",
                ylabel: str = "Safety (100 − Safety avg)", reference_label: str = "paper",
                note: str | None = None, bounded: bool = True, points_label: str = "this run") -> Path:
    """Scatter of ``points`` (this project's models) and ``reference`` (e.g. the paper's published
    methods for the same base model), each labelled; both axes: higher is better. The Pareto
    frontier of ``points`` is drawn as a line. Writes a PNG and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _canvas()
    ax = fig.add_subplot(1, 1, 1)
    if reference:
        ax.scatter([p[1] for p in reference], [p[2] for p in reference], marker="s", s=28,
                   color="0.6", label=reference_label, zorder=2)
        for label, x, y in reference:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -9), fontsize=7,
                        color="0.4")
    if points:
        ax.scatter([p[1] for p in points], [p[2] for p in points], marker="o", s=44,
                   color="tab:blue", label=points_label, zorder=3)
        for label, x, y in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8,
                        color="tab:blue")
        front = _frontier(points)
        if len(front) > 1:
            ax.plot([p[1] for p in front], [p[2] for p in front], color="tab:blue", alpha=0.4,
                    linewidth=1, zorder=1)
    if not points and not reference:
        ax.text(0.5, 0.5, "no model has both a safety and a reasoning score", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)            # room for the labels
    if bounded:                          # percentages: the axes never leave 0-100 %
        for get, put in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):
            lo, hi = get()
            put(max(0.0, lo), min(100.0, hi))
        for coll in ax.collections:
            coll.set_clip_on(False)      # a point at 0 or 100 % stays whole on the edge
    if points or reference:
        ax.legend(loc="best", fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="0.4")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def grouped_bars(path: str | Path, groups: Sequence[str], series: dict[str, Sequence[float]],
                 title: str = "", ylabel: str = "%") -> Path:
    """Bars of percentages: one cluster per group, one bar per series (e.g. base vs trained);
    the y axis spans 0-100 %. NaN values (a group a series lacks) draw no bar."""
    import math
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _canvas(width=max(7.0, 0.55 * len(groups) + 2), height=4.5)
    ax = fig.add_subplot(1, 1, 1)
    k = max(1, len(series))
    width = 0.8 / k
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(groups))]
        vals = [0.0 if math.isnan(v) else v for v in values]
        bars = ax.bar(xs, vals, width=width, label=name, zorder=2)
        for b, v in zip(bars, values):
            if math.isnan(v):
                b.set_visible(False)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path

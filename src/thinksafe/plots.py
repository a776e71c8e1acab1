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
                note: str | None = None) -> Path:
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
                   color="tab:blue", label="this run", zorder=3)
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
    if points or reference:
        ax.legend(loc="best", fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="0.4")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path

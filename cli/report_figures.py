"""The evaluation report's PNG figures (`lsdm evaluate --report DIR`), drawn with Matplotlib.

The engine decides which figures the data has (engine/evaluation/report.py ``report_figures``) and
never draws; ``draw`` is handed to ``write_report`` and writes each one:

- ``r2_radar.png``: per-service R², a polar plot with one line per method, as the paper's Fig. 7; R²
  below ``RADAR_FLOOR`` is drawn at it and the title says so;
- ``mse_by_step.png``: MSE at each recursive step, one line per method, as Fig. 8;
- ``r2_by_method.png``: a bar chart of R² per method (the reference row in red).

Figures use Matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.evaluation.report import REFERENCE, ReportFigure, finite_number, services_of

RADAR_FLOOR = -1.0  # the radar's radial axis starts at min(0, lowest R²) but no lower than this


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _radar_png(path: Path, per_service_r2: dict[str, dict[str, float]]) -> Path:
    services = services_of(per_service_r2)
    angles = np.linspace(0, 2 * np.pi, len(services), endpoint=False)
    values = [v for scores in per_service_r2.values() for v in map(finite_number, scores.values()) if v is not None]
    low = max(RADAR_FLOOR, min(0.0, min(values, default=0.0)))  # very negative R² would squash the rest
    high = min(1.0, math.ceil(10 * (max(values, default=1.0) + 0.05)) / 10)
    high = high if high > low else low + 0.1
    fig = _figure(7.5, 7.5)
    ax = fig.add_subplot(projection="polar")
    for method, scores in per_service_r2.items():
        r = [
            min(high, max(low, finite_number(scores.get(s)) if finite_number(scores.get(s)) is not None else low))
            for s in services
        ]
        ax.plot(np.append(angles, angles[:1]), r + r[:1], marker="o", markersize=3, linewidth=1.5, label=method)
    ax.set_xticks(angles)
    ax.set_xticklabels(services, fontsize=8)
    ax.set_ylim(low, high)
    clipped = any(v < RADAR_FLOOR for v in values)
    ax.set_title(
        "R² per service" + (f" (values below {RADAR_FLOOR:g} drawn at {RADAR_FLOOR:g})" if clipped else ""), pad=18
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


def _steps_png(path: Path, mse_by_step: dict[str, list[float]]) -> Path:
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    for method, values in mse_by_step.items():
        points = [(i + 1, v) for i, v in enumerate(map(finite_number, values)) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, linewidth=1.5, label=method)
    ax.set_xlabel("recursive prediction step")
    ax.set_ylabel("MSE (normalised scale)")
    ax.set_title("MSE by recursive step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


def _r2_bars_png(path: Path, rows: list[dict]) -> Path:
    pairs = [(row["method"], row["r2"]) for row in rows if row["r2"] is not None]
    fig = _figure(max(5.0, 0.9 * len(pairs) + 2), 4.5)
    ax = fig.add_subplot()
    names, values = zip(*pairs, strict=True)
    bars = ax.bar(range(len(values)), values, color=["#d62728" if n.lower() == REFERENCE else "#1f77b4" for n in names])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("R²")
    ax.set_title("R² by method")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


DRAWERS = {"r2_radar.png": _radar_png, "mse_by_step.png": _steps_png, "r2_by_method.png": _r2_bars_png}


def draw(figure: ReportFigure, path: Path) -> Path:
    """Draw one of the report's figures into ``path`` (write_report's ``draw``)."""
    return DRAWERS[figure.file](path, figure.data)

"""The evaluation report: Markdown tables like the paper's Tables III/IV, CSV files and PNG figures.

``write_report`` takes plain data (dicts and lists: whatever computed the numbers) and writes into
``out_dir``:

- ``report.md``: title, metadata, Table III (methods compared) and Table IV (ablations) with a Δ
  column per metric relative to the reference row (``lsdm``), the per-service R² table, the MSE per
  recursive step, the figures and the notes;
- ``table3.csv``, ``table4.csv``: one row per method: the eight metrics and the Δ percentages;
- ``per_service_r2.csv``: one row per method, one column per service;
- ``mse_by_step.csv``: one row per recursive step (1..n), one column per method;
- ``r2_radar.png`` (per-service R², a polar plot with one line per method, as the paper's Fig. 7;
  R² below -1 is drawn at -1 and the title says so),
  ``mse_by_step.png`` (MSE at each recursive step, one line per method, as Fig. 8) and
  ``r2_by_method.png`` (a bar chart of R² per method); a figure without data is not written.

Δ follows the paper's convention ("improvement percentage relative to the Ours row"): how much worse
the row is than the reference, in percent of the reference value: (x - ref) / |ref| for MSE, RMSE,
MAE and CRPS (lower is better), (ref - x) / |ref| for CS and R² (higher is better). 0 for the
reference itself, negative where a row beats it, "—" without a reference row or when ref = 0.
Coverage has no Δ (it is judged by its distance to the nominal 0.5 / 0.9). **Bold** marks the best
value of each column (coverage: the one closest to nominal; ties are all bold).

Figures use Matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.errors import InputError
from engine.metrics import HIGHER_IS_BETTER, METRIC_KEYS, NOMINAL_COVERAGE

REFERENCE = "lsdm"
LABELS = {"mse": "MSE", "rmse": "RMSE", "mae": "MAE", "cs": "CS", "r2": "R²", "crps": "CRPS",
          "cov50": "cov50", "cov90": "cov90"}
DELTA_KEYS = tuple(HIGHER_IS_BETTER)  # mse, rmse, mae, cs, r2, crps
RADAR_FLOOR = -1.0  # the radar's radial axis starts at min(0, lowest R²) but no lower than this


def _number(value: object) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean_rows(rows: Iterable[dict], table: str) -> list[dict]:
    cleaned = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not str(row.get("method", "")).strip():
            raise InputError(f"row {i + 1} of {table} has no method name", field="method")
        cleaned.append({"method": str(row["method"]), **{key: _number(row.get(key)) for key in METRIC_KEYS}})
    return cleaned


def delta_percent(key: str, value: float | None, reference: float | None) -> float | None:
    """The paper's Δ: how much worse than the reference, in percent of it (negative: better)."""
    if value is None or reference is None or reference == 0 or key not in HIGHER_IS_BETTER:
        return None
    worse = (reference - value) if HIGHER_IS_BETTER[key] else (value - reference)
    return 100.0 * worse / abs(reference)


def _best(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    if not values:
        return None
    if key in NOMINAL_COVERAGE:
        return min(abs(v - NOMINAL_COVERAGE[key]) for v in values)
    return max(values) if HIGHER_IS_BETTER[key] else min(values)


def _is_best(key: str, value: float | None, best: float | None) -> bool:
    if value is None or best is None:
        return False
    if key in NOMINAL_COVERAGE:
        return math.isclose(abs(value - NOMINAL_COVERAGE[key]), best, rel_tol=1e-12, abs_tol=1e-15)
    return math.isclose(value, best, rel_tol=1e-12, abs_tol=1e-15)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _reference_row(rows: list[dict], reference: str) -> dict | None:
    return next((row for row in rows if row["method"].lower() == reference.lower()), None)


def _with_deltas(rows: list[dict], reference: str) -> list[dict]:
    ref = _reference_row(rows, reference)
    return [{**row, **{f"delta_{key}": delta_percent(key, row[key], ref[key] if ref else None)
                       for key in DELTA_KEYS}} for row in rows]


def _metric_table(rows: list[dict], reference: str) -> list[str]:
    rows = _with_deltas(rows, reference)
    header, align = ["Method"], ["---"]
    for key in METRIC_KEYS:
        header.append(LABELS[key])
        align.append("---:")
        if key in DELTA_KEYS:
            header.append(f"Δ{LABELS[key]}")
            align.append("---:")
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    best = {key: _best(rows, key) for key in METRIC_KEYS}
    for row in rows:
        cells = [row["method"]]
        for key in METRIC_KEYS:
            text = _fmt(row[key])
            cells.append(f"**{text}**" if _is_best(key, row[key], best[key]) else text)
            if key in DELTA_KEYS:
                delta = row[f"delta_{key}"]
                cells.append("—" if delta is None else f"{delta:.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])
    return path


def _table_csv(path: Path, rows: list[dict], reference: str) -> Path:
    rows = _with_deltas(rows, reference)
    header = ["method", *METRIC_KEYS, *(f"delta_{key}_percent" for key in DELTA_KEYS)]
    return _write_csv(path, header, ([row["method"], *(row[k] for k in METRIC_KEYS),
                                      *(row[f"delta_{k}"] for k in DELTA_KEYS)] for row in rows))


def _services_of(per_service_r2: dict[str, dict[str, float]]) -> list[str]:
    services: list[str] = []
    for values in per_service_r2.values():
        services.extend(s for s in values if s not in services)
    return services


def _figure(width: float, height: float):  # noqa: ANN202
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _radar_png(path: Path, per_service_r2: dict[str, dict[str, float]]) -> Path:
    import numpy as np

    services = _services_of(per_service_r2)
    angles = np.linspace(0, 2 * np.pi, len(services), endpoint=False)
    values = [v for scores in per_service_r2.values() for v in map(_number, scores.values()) if v is not None]
    low = max(RADAR_FLOOR, min(0.0, min(values, default=0.0)))  # very negative R² would squash the rest
    high = min(1.0, math.ceil(10 * (max(values, default=1.0) + 0.05)) / 10)
    high = high if high > low else low + 0.1
    fig = _figure(7.5, 7.5)
    ax = fig.add_subplot(projection="polar")
    for method, scores in per_service_r2.items():
        r = [min(high, max(low, _number(scores.get(s)) if _number(scores.get(s)) is not None else low))
             for s in services]
        ax.plot(np.append(angles, angles[:1]), r + r[:1], marker="o", markersize=3, linewidth=1.5, label=method)
    ax.set_xticks(angles)
    ax.set_xticklabels(services, fontsize=8)
    ax.set_ylim(low, high)
    clipped = any(v < RADAR_FLOOR for v in values)
    ax.set_title("R² per service" + (f" (values below {RADAR_FLOOR:g} drawn at {RADAR_FLOOR:g})" if clipped else ""),
                 pad=18)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


def _steps_png(path: Path, mse_by_step: dict[str, list[float]]) -> Path:
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    for method, values in mse_by_step.items():
        points = [(i + 1, v) for i, v in enumerate(map(_number, values)) if v is not None]
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
    bars = ax.bar(range(len(values)), values, color=["#d62728" if n.lower() == REFERENCE else "#1f77b4"
                                                     for n in names])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("R²")
    ax.set_title("R² by method")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


def write_report(out_dir: str | Path, *, title: str, table3_rows: Sequence[dict],
                 table4_rows: Sequence[dict] = (), per_service_r2: dict[str, dict[str, float]] | None = None,
                 mse_by_step: dict[str, list[float]] | None = None, notes: Sequence[str] = (),
                 metadata: dict | None = None, reference: str = REFERENCE) -> list[Path]:
    """Write the report files (see the module docstring) and return their paths.

    Rows are dicts with ``method`` and any of mse, rmse, mae, cs, r2, crps, cov50, cov90 (missing or
    non-finite values print as "—"; other keys are ignored).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table3 = _clean_rows(table3_rows, "table 3")
    table4 = _clean_rows(table4_rows, "table 4")
    per_service_r2 = {str(m): dict(v) for m, v in (per_service_r2 or {}).items()}
    mse_by_step = {str(m): list(v) for m, v in (mse_by_step or {}).items()}
    written: list[Path] = []

    written.append(_table_csv(out / "table3.csv", table3, reference))
    written.append(_table_csv(out / "table4.csv", table4, reference))
    services = _services_of(per_service_r2)
    written.append(_write_csv(out / "per_service_r2.csv", ["method", *services],
                              ([m, *(_number(v.get(s)) for s in services)] for m, v in per_service_r2.items())))
    n_steps = max((len(v) for v in mse_by_step.values()), default=0)
    methods = list(mse_by_step)
    written.append(_write_csv(out / "mse_by_step.csv", ["step", *methods],
                              ([i + 1, *(_number(mse_by_step[m][i]) if i < len(mse_by_step[m]) else None
                                         for m in methods)] for i in range(n_steps))))

    figures: list[tuple[str, Path]] = []
    if per_service_r2 and services:
        figures.append(("R² per service", _radar_png(out / "r2_radar.png", per_service_r2)))
    if any(_number(v) is not None for values in mse_by_step.values() for v in values):
        figures.append(("MSE by recursive step", _steps_png(out / "mse_by_step.png", mse_by_step)))
    bar_rows = table3 if any(r["r2"] is not None for r in table3) else table4
    if any(r["r2"] is not None for r in bar_rows):
        figures.append(("R² by method", _r2_bars_png(out / "r2_by_method.png", bar_rows)))

    lines = [f"# {title}", ""]
    if metadata:
        for key, value in metadata.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            lines.append(f"- **{key}**: {text}")
        lines.append("")
    legend = (f"Δ: how much worse than the `{reference}` row, in percent of its value (the paper's "
              "convention; negative = better). **Bold**: best in the column (coverage: closest to the "
              "nominal 0.5 / 0.9). Metrics on the normalised scale; point metrics of the sample mean.")
    for heading, rows in (("Table III: methods compared", table3), ("Table IV: ablations", table4)):
        lines += [f"## {heading}", ""]
        if rows:
            lines += _metric_table(rows, reference)
            if _reference_row(rows, reference) is None:
                lines += ["", f"(no `{reference}` row: no Δ)"]
        else:
            lines.append("(no rows)")
        lines.append("")
    lines += [legend, ""]
    if per_service_r2:
        lines += ["## R² per service", "", "| Method | " + " | ".join(services) + " |",
                  "| --- | " + " | ".join("---:" for _ in services) + " |"]
        best = {s: max((x for x in (_number(v.get(s)) for v in per_service_r2.values()) if x is not None),
                       default=None) for s in services}
        for method, scores in per_service_r2.items():
            cells = []
            for s in services:
                x = _number(scores.get(s))
                text = _fmt(x, 3)
                cells.append(f"**{text}**" if x is not None and best[s] is not None and x == best[s] else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if n_steps:
        lines += ["## MSE by recursive step", "", "| Step | " + " | ".join(methods) + " |",
                  "| ---: | " + " | ".join("---:" for _ in methods) + " |"]
        for i in range(n_steps):
            cells = [_fmt(_number(mse_by_step[m][i]) if i < len(mse_by_step[m]) else None) for m in methods]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures:
            lines += [f"![{caption}]({path.name})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    report_md = out / "report.md"
    report_md.write_text("\n".join(lines), encoding="utf-8")
    return [report_md, *written, *(path for _, path in figures)]

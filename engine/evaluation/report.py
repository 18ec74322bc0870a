"""The evaluation report: Markdown tables like the paper's Tables III/IV, CSV files, and which figures to draw.

``write_report`` takes plain data (dicts and lists: whatever computed the numbers) and writes into
``out_dir``:

- ``report.md``: title, metadata, Table III (methods compared) and Table IV (ablations) with a Δ
  column per metric relative to the reference row (``lsdm``), the per-service R² table, the MSE per
  recursive step, the figures and the notes;
- ``table3.csv``, ``table4.csv``: one row per method: the eight metrics and the Δ percentages;
- ``per_service_r2.csv``: one row per method, one column per service;
- ``mse_by_step.csv``: one row per recursive step (1..n), one column per method;
- with a ``draw`` callback, the figures: ``r2_radar.png`` (per-service R², as the paper's Fig. 7),
  ``mse_by_step.png`` (MSE at each recursive step, as Fig. 8) and ``r2_by_method.png`` (R² per method);
  a figure without data is not written. The engine never draws: ``report_figures`` says which figures
  the data has (``ReportFigure``: file, caption, data) and the caller draws them (the command line's
  cli/report_figures.py, with Matplotlib); report.md lists those that were drawn.

Δ follows the paper's convention ("improvement percentage relative to the Ours row"): how much worse
the row is than the reference, in percent of the reference value: (x - ref) / |ref| for MSE, RMSE,
MAE and CRPS (lower is better), (ref - x) / |ref| for CS and R² (higher is better). 0 for the
reference itself, negative where a row beats it, "—" without a reference row or when ref = 0.
Coverage has no Δ (it is judged by its distance to the nominal 0.5 / 0.9). **Bold** marks the best
value of each column (coverage: the one closest to nominal; ties are all bold).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.evaluation.metrics import HIGHER_IS_BETTER, METRIC_KEYS, NOMINAL_COVERAGE

REFERENCE = "lsdm"
LABELS = {
    "mse": "MSE",
    "rmse": "RMSE",
    "mae": "MAE",
    "cs": "CS",
    "r2": "R²",
    "crps": "CRPS",
    "cov50": "cov50",
    "cov90": "cov90",
}
DELTA_KEYS = tuple(HIGHER_IS_BETTER)  # mse, rmse, mae, cs, r2, crps


def finite_number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number or not finite."""
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
        cleaned.append({"method": str(row["method"]), **{key: finite_number(row.get(key)) for key in METRIC_KEYS}})
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
    return [
        {**row, **{f"delta_{key}": delta_percent(key, row[key], ref[key] if ref else None) for key in DELTA_KEYS}}
        for row in rows
    ]


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
    return _write_csv(
        path,
        header,
        ([row["method"], *(row[k] for k in METRIC_KEYS), *(row[f"delta_{k}"] for k in DELTA_KEYS)] for row in rows),
    )


def services_of(per_service_r2: dict[str, dict[str, float]]) -> list[str]:
    """The services of a per-service table, in the order they first appear."""
    services: list[str] = []
    for values in per_service_r2.values():
        services.extend(s for s in values if s not in services)
    return services


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report as data; the caller draws it into ``file`` (cli/report_figures.py)."""

    file: str  # r2_radar.png | mse_by_step.png | r2_by_method.png
    caption: str  # the heading report.md gives it
    data: dict | list  # {method: {service: R²}}, {method: [MSE by step]} or the table rows with "r2"


DrawFigure = Callable[[ReportFigure, Path], Path]  # draws a figure into the path, returns the path


def report_figures(
    table3: list[dict],
    table4: list[dict],
    per_service_r2: dict[str, dict[str, float]],
    mse_by_step: dict[str, list[float]],
) -> list[ReportFigure]:
    """The figures the cleaned tables have data for, in the report's order."""
    figures = []
    if per_service_r2 and services_of(per_service_r2):
        figures.append(ReportFigure("r2_radar.png", "R² per service", per_service_r2))
    if any(finite_number(v) is not None for values in mse_by_step.values() for v in values):
        figures.append(ReportFigure("mse_by_step.png", "MSE by recursive step", mse_by_step))
    bar_rows = table3 if any(r["r2"] is not None for r in table3) else table4
    if any(r["r2"] is not None for r in bar_rows):
        figures.append(ReportFigure("r2_by_method.png", "R² by method", bar_rows))
    return figures


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    table3_rows: Sequence[dict],
    table4_rows: Sequence[dict] = (),
    extra_tables: Sequence[tuple[str, str, Sequence[dict]]] = (),
    per_service_r2: dict[str, dict[str, float]] | None = None,
    mse_by_step: dict[str, list[float]] | None = None,
    notes: Sequence[str] = (),
    metadata: dict | None = None,
    reference: str = REFERENCE,
    draw: DrawFigure | None = None,
) -> list[Path]:
    """Write the report files (see the module docstring) and return their paths.

    Rows are dicts with ``method`` and any of mse, rmse, mae, cs, r2, crps, cov50, cov90 (missing or
    non-finite values print as "—"; other keys are ignored). ``extra_tables``: (heading, file stem, rows)
    written after Table IV, to ``<stem>.csv`` too (the fracast subset). ``draw``: draws each figure.
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
    extras = [(heading, _clean_rows(rows, stem)) for heading, stem, rows in extra_tables]
    for (_, stem, _), (_, rows) in zip(extra_tables, extras, strict=True):
        written.append(_table_csv(out / f"{stem}.csv", rows, reference))
    services = services_of(per_service_r2)
    written.append(
        _write_csv(
            out / "per_service_r2.csv",
            ["method", *services],
            ([m, *(finite_number(v.get(s)) for s in services)] for m, v in per_service_r2.items()),
        )
    )
    n_steps = max((len(v) for v in mse_by_step.values()), default=0)
    methods = list(mse_by_step)
    written.append(
        _write_csv(
            out / "mse_by_step.csv",
            ["step", *methods],
            (
                [i + 1, *(finite_number(mse_by_step[m][i]) if i < len(mse_by_step[m]) else None for m in methods)]
                for i in range(n_steps)
            ),
        )
    )

    figures: list[tuple[str, Path]] = []
    if draw is not None:
        for figure in report_figures(table3, table4, per_service_r2, mse_by_step):
            figures.append((figure.caption, draw(figure, out / figure.file)))

    lines = [f"# {title}", ""]
    if metadata:
        for key, value in metadata.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            lines.append(f"- **{key}**: {text}")
        lines.append("")
    legend = (
        f"Δ: how much worse than the `{reference}` row, in percent of its value (the paper's "
        "convention; negative = better). **Bold**: best in the column (coverage: closest to the "
        "nominal 0.5 / 0.9). Metrics on the normalised scale; point metrics of the sample mean."
    )
    for heading, rows in (("Table III: methods compared", table3), ("Table IV: ablations", table4), *extras):
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
        lines += [
            "## R² per service",
            "",
            "| Method | " + " | ".join(services) + " |",
            "| --- | " + " | ".join("---:" for _ in services) + " |",
        ]
        best = {
            s: max(
                (x for x in (finite_number(v.get(s)) for v in per_service_r2.values()) if x is not None), default=None
            )
            for s in services
        }
        for method, scores in per_service_r2.items():
            cells = []
            for s in services:
                x = finite_number(scores.get(s))
                text = _fmt(x, 3)
                cells.append(f"**{text}**" if x is not None and best[s] is not None and x == best[s] else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if n_steps:
        lines += [
            "## MSE by recursive step",
            "",
            "| Step | " + " | ".join(methods) + " |",
            "| ---: | " + " | ".join("---:" for _ in methods) + " |",
        ]
        for i in range(n_steps):
            cells = [_fmt(finite_number(mse_by_step[m][i]) if i < len(mse_by_step[m]) else None) for m in methods]
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

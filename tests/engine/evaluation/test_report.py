from __future__ import annotations

import csv

import pytest

from engine.errors import InputError
from engine.evaluation.report import ReportFigure, delta_percent, report_figures, write_report

SERVICES = ["Utilities", "Games", "Music", "News"]
ROWS = [
    {
        "method": "seasonal-naive",
        "mse": 0.10,
        "rmse": 0.316,
        "mae": 0.16,
        "cs": 0.58,
        "r2": -0.15,
        "crps": 0.16,
        "cov50": 0.61,
        "cov90": 0.61,
    },
    {
        "method": "arima",
        "mse": 0.06,
        "rmse": 0.245,
        "mae": 0.18,
        "cs": 0.70,
        "r2": 0.29,
        "crps": 0.12,
        "cov50": 0.58,
        "cov90": 0.81,
    },
    {
        "method": "lsdm",
        "mse": 0.05,
        "rmse": 0.224,
        "mae": 0.12,
        "cs": 0.75,
        "r2": 0.40,
        "crps": 0.09,
        "cov50": 0.52,
        "cov90": 0.93,
        "extra": "ignored",
    },
]
ABLATION = [{"method": "lsdm-no-2d-attention", "mse": 0.07, "r2": 0.3}, {"method": "lsdm", "mse": 0.05, "r2": 0.4}]


def _write(tmp_path, draw=None):
    return write_report(
        tmp_path / "report",
        title="Evaluation of the default city",
        table3_rows=ROWS,
        table4_rows=ABLATION,
        per_service_r2={
            row["method"]: {s: 0.1 * i + j * 0.05 for i, s in enumerate(SERVICES)} for j, row in enumerate(ROWS)
        },
        mse_by_step={"arima": [0.05 + 0.002 * i for i in range(30)], "lsdm": [0.04 + 0.001 * i for i in range(30)]},
        notes=["Synthetic city; not the paper's data."],
        metadata={"dataset": "city-0", "windows": 12000},
        draw=draw,
    )


def test_report_writes_markdown_and_csvs_and_draws_nothing_itself(tmp_path):
    paths = _write(tmp_path)
    assert {p.name for p in paths} == {"report.md", "table3.csv", "table4.csv", "per_service_r2.csv", "mse_by_step.csv"}
    assert all(path.is_file() for path in paths)
    assert "## Figures" not in (tmp_path / "report" / "report.md").read_text()


def test_the_caller_draws_each_figure_the_data_has_and_report_md_lists_them(tmp_path):
    asked: list[ReportFigure] = []

    def draw(figure: ReportFigure, path):
        asked.append(figure)
        path.write_bytes(b"figure")
        return path

    paths = _write(tmp_path, draw)
    assert [f.file for f in asked] == ["r2_radar.png", "mse_by_step.png", "r2_by_method.png"]
    assert [f.caption for f in asked] == ["R² per service", "MSE by recursive step", "R² by method"]
    assert {p.name for p in paths} >= {"r2_radar.png", "mse_by_step.png", "r2_by_method.png"}
    text = (tmp_path / "report" / "report.md").read_text()
    assert "![R² per service](r2_radar.png)" in text and "![R² by method](r2_by_method.png)" in text


def test_figures_without_data_are_not_asked_for():
    rows = [{"method": "arima", "mse": 0.1, "r2": None}]
    assert report_figures(rows, [], {}, {"arima": [None, float("nan")]}) == []
    with_r2 = [{"method": "lsdm", "r2": 0.4}]
    assert [f.file for f in report_figures(rows, with_r2, {}, {})] == ["r2_by_method.png"]


def test_markdown_lists_every_method_with_deltas_relative_to_lsdm_and_bold_best(tmp_path):
    _write(tmp_path)
    text = (tmp_path / "report" / "report.md").read_text()
    for method in ("seasonal-naive", "arima", "lsdm", "lsdm-no-2d-attention"):
        assert f"| {method} |" in text
    assert "Evaluation of the default city" in text and "Synthetic city" in text and "city-0" in text
    lsdm_line = next(line for line in text.splitlines() if line.startswith("| lsdm |"))
    assert "**0.0500**" in lsdm_line and "0.00%" in lsdm_line
    naive_line = next(line for line in text.splitlines() if line.startswith("| seasonal-naive |"))
    assert "100.00%" in naive_line  # MSE 0.10 vs 0.05
    assert "**0.5200**" in lsdm_line  # cov50 closest to 0.5


def test_delta_follows_the_papers_convention():
    assert delta_percent("mse", 1.015, 0.07) == pytest.approx(1350.0)  # Table III, ARIMA row
    assert delta_percent("r2", 0.1650, 0.6639) == pytest.approx(75.15, abs=0.01)
    assert delta_percent("cs", 0.70, 0.658) < 0  # better than the reference: negative
    assert delta_percent("mse", 0.1, 0.0) is None and delta_percent("cov50", 0.5, 0.5) is None


def test_csv_files_hold_the_numbers(tmp_path):
    _write(tmp_path)
    with (tmp_path / "report" / "table3.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["seasonal-naive", "arima", "lsdm"]
    assert float(rows[0]["delta_mse_percent"]) == pytest.approx(100.0)
    with (tmp_path / "report" / "mse_by_step.csv").open() as handle:
        steps = list(csv.DictReader(handle))
    assert len(steps) == 30 and steps[0]["step"] == "1" and float(steps[29]["lsdm"]) == pytest.approx(0.069)
    with (tmp_path / "report" / "per_service_r2.csv").open() as handle:
        assert next(csv.reader(handle)) == ["method", *SERVICES]


def test_report_without_reference_row_or_figure_data_still_writes_tables(tmp_path):
    paths = write_report(
        tmp_path,
        title="t",
        table3_rows=[{"method": "arima", "mse": 0.1}],
        table4_rows=[],
        per_service_r2={},
        mse_by_step={},
        notes=[],
        metadata={},
    )
    assert {p.name for p in paths} == {"report.md", "table3.csv", "table4.csv", "per_service_r2.csv", "mse_by_step.csv"}
    assert "no `lsdm` row" in (tmp_path / "report.md").read_text()


def test_rows_without_a_method_are_rejected(tmp_path):
    with pytest.raises(InputError, match="method"):
        write_report(
            tmp_path,
            title="t",
            table3_rows=[{"mse": 0.1}],
            table4_rows=[],
            per_service_r2={},
            mse_by_step={},
            notes=[],
            metadata={},
        )

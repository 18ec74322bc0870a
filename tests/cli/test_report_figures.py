"""The evaluation report's PNG figures (cli/report_figures.py), drawn into the report folder by the
command line; report.md lists them as it always did."""

from __future__ import annotations

from cli.report_figures import draw
from engine.evaluation.report import write_report

SERVICES = ["Utilities", "Games", "Music", "News"]
ROWS = [
    {"method": "seasonal-naive", "mse": 0.10, "rmse": 0.316, "r2": -0.15},
    {"method": "arima", "mse": 0.06, "rmse": 0.245, "r2": 0.29},
    {"method": "lsdm", "mse": 0.05, "rmse": 0.224, "r2": 0.40},
]


def _write(tmp_path, per_service_r2=None):
    return write_report(
        tmp_path / "report",
        title="Evaluation of the default city",
        table3_rows=ROWS,
        table4_rows=[],
        per_service_r2=per_service_r2
        or {row["method"]: {s: 0.1 * i + j * 0.05 for i, s in enumerate(SERVICES)} for j, row in enumerate(ROWS)},
        mse_by_step={"arima": [0.05 + 0.002 * i for i in range(30)], "lsdm": [0.04 + 0.001 * i for i in range(30)]},
        draw=draw,
    )


def test_report_writes_markdown_csvs_and_pngs(tmp_path):
    paths = _write(tmp_path)
    names = {p.name for p in paths}
    assert names == {
        "report.md",
        "table3.csv",
        "table4.csv",
        "per_service_r2.csv",
        "mse_by_step.csv",
        "r2_radar.png",
        "mse_by_step.png",
        "r2_by_method.png",
    }
    for path in paths:
        assert path.is_file()
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Figures" in text
    for line in (
        "![R² per service](r2_radar.png)",
        "![MSE by recursive step](mse_by_step.png)",
        "![R² by method](r2_by_method.png)",
    ):
        assert line in text


def test_the_radar_draws_very_negative_r2_at_its_floor(tmp_path):
    scores = {"lsdm": dict.fromkeys(SERVICES, 0.3), "seasonal-naive": dict.fromkeys(SERVICES, -7.0)}
    paths = _write(tmp_path, scores)
    radar = next(p for p in paths if p.name == "r2_radar.png")
    assert radar.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

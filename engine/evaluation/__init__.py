"""Judging forecasts: the paper's tables on our data (``evaluate``), the baselines it compares with
(``baselines``), the metrics (``metrics``: Eq. 10-14, CRPS, coverage), outside predictions scored on the
exported windows (``scoring``) and the report's numbers (``report``: report.md and CSV tables; the PNG
figures are described as data and drawn by the command line, cli/report_figures.py)."""

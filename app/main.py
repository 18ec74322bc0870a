"""The dashboard's entry: it only routes (st.navigation). Run with `lsdm app` or `make run`."""

from __future__ import annotations

import sys
from pathlib import Path

# Streamlit runs this file as a script: make the project's packages importable from a checkout too.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.common import app_icon  # noqa: E402

# Page files live in views/, not pages/: Streamlit treats a pages/ folder beside the entry as a legacy
# multipage app and showed its file list on a first visit to a deep link.
PAGES = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="LSDM traffic forecasts", page_icon=app_icon(), layout="wide")

navigation = st.navigation(
    {
        "Explore": [
            st.Page(PAGES / "map.py", title="Map", icon=":material/map:", url_path="map", default=True),
            st.Page(PAGES / "cell.py", title="Cell", icon=":material/cell_tower:", url_path="cell"),
            st.Page(PAGES / "user.py", title="User", icon=":material/person:", url_path="user"),
        ],
        "Predict": [
            st.Page(PAGES / "forecast.py", title="Forecast", icon=":material/insights:", url_path="forecast"),
            st.Page(PAGES / "whatif.py", title="What-if", icon=":material/alt_route:", url_path="whatif"),
        ],
        "Manage": [
            st.Page(
                PAGES / "models.py", title="Models & evaluation", icon=":material/model_training:", url_path="models"
            ),
            st.Page(PAGES / "datasets.py", title="Data", icon=":material/database:", url_path="data"),
            st.Page(PAGES / "jobs.py", title="Jobs", icon=":material/work_history:", url_path="jobs"),
            st.Page(PAGES / "glossary.py", title="Glossary", icon=":material/menu_book:", url_path="glossary"),
        ],
    }
)
navigation.run()

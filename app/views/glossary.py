"""Glossary: every technical term the dashboard uses, in plain words (app/glossary.py, the same text as the
help tooltips beside each widget and column)."""

from __future__ import annotations

import streamlit as st

from app.common import page_header
from app.glossary import TERMS

page_header("Glossary", "The words of the forecasts and scores, in plain language. Hover a ⓘ for the same text.")
search = st.text_input("Find a term", key="glossary_find", placeholder="e.g. CRPS")
shown = {t: text for t, text in TERMS.items() if search.lower() in (t + " " + text).lower()}
if not shown:
    st.caption(f"No term mentions “{search}”.")
for term in sorted(shown, key=str.lower):
    st.markdown(f"**{term}**  \n{shown[term]}")

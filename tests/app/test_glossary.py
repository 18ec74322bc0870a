"""The glossary: every term it lists is on its page, the search narrows them, and the pages' help tooltips
are the glossary's own text (one source, so a tooltip and the page never disagree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.glossary import TERMS, explain
from tests.app.conftest import run_page


def test_the_glossary_page_lists_every_term_and_its_search_narrows_them(empty_db: Path) -> None:
    at = run_page("glossary")
    text = "\n".join(md.value for md in at.markdown)
    assert all(f"**{term}**" in text and TERMS[term] in text for term in TERMS)
    at.text_input(key="glossary_find").set_value("crps").run()
    shown = [md.value for md in at.markdown if md.value.startswith("**")]
    assert shown and all("crps" in md.lower() for md in shown) and len(shown) < len(TERMS)
    at.text_input(key="glossary_find").set_value("no such word").run()
    assert any("No term mentions" in c.value for c in at.caption)


def test_an_unknown_term_fails_at_once_instead_of_an_empty_tooltip() -> None:
    with pytest.raises(KeyError):
        explain("flux capacitor")


def test_the_forecast_pages_jargon_is_explained_in_its_tooltips(app_db: Path) -> None:
    at = run_page("forecast")
    helps = {w.label: w.help or "" for w in [*at.number_input, *at.radio, *at.slider, *at.checkbox]}
    for label, term in (("DDIM steps", "DDIM steps"), ("Sampler", "sampler"), ("Guidance", "guidance")):
        assert TERMS[term] in helps[label], label
    assert TERMS["paired paths"] in helps["Paired paths"]

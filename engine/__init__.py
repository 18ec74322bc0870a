"""Everything that computes: data, environment, model, training, forecasting, evaluation.

Never imports streamlit (tests/test_layout.py checks it)."""

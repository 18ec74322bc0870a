"""Cell and area load, built bottom-up from every user's forecast (docs/model.md#cell-and-area-load).

- location.py: where users will be, drawn per sample path from their history (the ``sampled`` scenario);
- core.py: scopes, sums by cell, capacities, the stored runs and their export (no torch: pages read it);
- forecast.py: a load run (who can reach the scope, their forecasts in chunks, the risk), ``lsdm load``;
- whatif.py: a cell goes down, or an event brings users (``lsdm load-whatif``).
"""

"""The dashboard's words, explained once: every technical term a page shows (a widget's label, a column,
a legend) has its plain-language meaning here. Pages use ``explain(term)`` as the widget's or column's help
tooltip, and the Glossary page lists them all, so the tooltip and the page never disagree."""

from __future__ import annotations

# term -> what it means, for an operator who is not an ML engineer. Keep each to two or three sentences.
TERMS: dict[str, str] = {
    "sample path": "One possible future of a user's or cell's traffic, drawn by the model. The dashboard "
    "draws many (the 'sample paths' setting) and reports their median and bands: the spread of the paths "
    "is the forecast's uncertainty.",
    "median and bands": "The middle of the sample paths hour by hour, and the ranges holding the central 50 % "
    "and 90 % of them. A wide band means the model is unsure.",
    "DDIM steps": "DDIM is a fast way of drawing a sample path from the diffusion model: it takes a few large "
    "denoising steps instead of every one of the model's steps (DDPM, as in the paper). More steps: closer to "
    "DDPM and slower.",
    "sampler": "How a sample path is drawn from the diffusion model: DDIM (a few large steps, fast) or DDPM "
    "(every diffusion step, as in the paper, slower).",
    "paired paths": "Antithetic sampling: paths are drawn in pairs whose random noise is mirrored, which "
    "evens out the bands with fewer paths. Off: every path has its own noise.",
    "guidance": "Classifier-free guidance: how strongly the forecast follows the environment (the cell's "
    "surroundings). 0 ignores it, 1 is the model as trained, above 1 exaggerates it.",
    "seed": "The number that fixes the random draws: the same seed and settings give the same paths, so a "
    "what-if scenario and its baseline can be compared path by path.",
    "location scenario": "Where the user is assumed to be during the forecast: the habitual cell of each hour "
    "of the week, the last cell seen, a chosen cell, or a cell drawn on each path from the user's own history.",
    "a and b (Eq. 9)": "The weights of the environment vector: a times the tile's embedding plus b times the "
    "description's (POI) embedding (Eq. 9 of the paper). a = 0 ignores the tile, b = 0 the description.",
    "environment": "What surrounds a cell: its points of interest (shops, offices, homes ...), a description "
    "written from them and a satellite tile, turned into one vector (z_env) the model is conditioned on.",
    "CRPS": "Continuous ranked probability score: how far the whole forecast distribution (all the sample "
    "paths) lies from what happened. Lower is better; for a single path it equals the absolute error.",
    "coverage": "The share of true values that fell inside a band: a 90 % band should hold about 90 % of "
    "them. Much less means the forecast is overconfident; much more, too cautious.",
    "RMSE": "Root mean squared error of the point forecast (the paths' mean): large misses weigh more. Lower "
    "is better.",
    "MAE": "Mean absolute error of the point forecast: the typical miss. Lower is better.",
    "R²": "How much of the traffic's variation the forecast explains: 1 is perfect, 0 is no better than "
    "always forecasting the average, below 0 is worse than that.",
    "cosine": "Cosine similarity between forecast and truth over the services: 1 when the mix of services is "
    "right, whatever the volume.",
    "normalised scale": "The model works on log-scaled traffic divided by a per-service scale; scores on that "
    "scale compare data sets and services of very different volumes. The MB figures are in real units.",
    "seasonal mean": "The average of the same hour of the week on the training days: the floor any forecast "
    "must clear to be worth having.",
    "capacity": "What a cell can carry in an hour (MB), by default a high quantile of its own observed hourly "
    "load; editable on the Cell page.",
    "P(load > capacity)": "The share of sample paths on which a cell's load exceeds its capacity in that "
    "hour: the risk of congestion.",
    "within noise": "A what-if change whose 90 % interval (from the paired paths' differences) includes zero: "
    "the model cannot tell it apart from chance.",
}


def explain(term: str) -> str:
    """The help tooltip for ``term`` (its glossary entry); a KeyError names an unknown term at once."""
    return f"**{term}**: {TERMS[term]}"

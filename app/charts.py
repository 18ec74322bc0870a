"""Small Altair chart builders shared by the pages. Each takes a tidy DataFrame and returns a chart;
the service colour scale comes from app/common.py so a service has one colour everywhere. Charts are
rendered with ``st.altair_chart(chart, theme=None)`` so that Streamlit's theme keeps our colours."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from app.common import ACCENT, service_scale

GREY = "#9aa5b1"


def radar(
    frame: pd.DataFrame,
    services: list[str] | tuple[str, ...],
    *,
    value: str = "share",
    series: str = "series",
    title: str | None = None,
    size: int = 320,
    colors: dict[str, str] | None = None,
) -> alt.LayerChart:
    """A radar of one value per service for one or more series (e.g. truth vs forecast; paper Fig. 6).

    Altair has no polar line chart: x = r cos(theta), y = r sin(theta) per service, lines closed by
    repeating the first point and drawn in ``order``; rings and spokes as layers; axes off.
    ``frame`` columns: ``service``, ``value`` (>= 0), ``series``.
    """
    services = list(services)
    k = len(services)
    top = float(frame[value].max()) if len(frame) else 1.0
    top = top if top > 0 else 1.0
    angle = {name: math.pi / 2 - 2 * math.pi * i / k for i, name in enumerate(services)}
    rows = []
    for name, group in frame.groupby(series, sort=False):
        by_service = dict(zip(group["service"], group[value], strict=True))
        for i, service in enumerate([*services, services[0]]):
            r = float(by_service.get(service, 0.0)) / top
            rows.append(
                {
                    "series": name,
                    "service": service,
                    "order": i,
                    "value": float(by_service.get(service, 0.0)),
                    "x": r * math.cos(angle[service]),
                    "y": r * math.sin(angle[service]),
                }
            )
    points = pd.DataFrame(rows)
    rings = pd.DataFrame(
        [
            {"ring": f, "order": i, "x": f * math.cos(angle[s]), "y": f * math.sin(angle[s])}
            for f in (0.25, 0.5, 0.75, 1.0)
            for i, s in enumerate([*services, services[0]])
        ]
    )
    spokes = pd.DataFrame(
        [
            {
                "service": s,
                "x": 0.0,
                "y": 0.0,
                "x2": math.cos(angle[s]),
                "y2": math.sin(angle[s]),
                "lx": 1.18 * math.cos(angle[s]),
                "ly": 1.12 * math.sin(angle[s]),
            }
            for s in services
        ]
    )
    domain = alt.Scale(domain=[-1.35, 1.35])
    x, y = alt.X("x:Q", scale=domain, axis=None), alt.Y("y:Q", scale=domain, axis=None)
    names = list(dict.fromkeys(points["series"])) if len(points) else []
    palette = colors or {}
    default_colors = [ACCENT, "#4e79a7", "#59a14f", "#b07aa1"]
    color = alt.Color(
        "series:N",
        title=None,
        legend=alt.Legend(orient="bottom"),
        scale=alt.Scale(domain=names, range=[palette.get(n, default_colors[i % 4]) for i, n in enumerate(names)]),
    )
    ring_layer = (
        alt.Chart(rings).mark_line(color="#d9dee4", strokeWidth=1).encode(x=x, y=y, detail="ring:N", order="order:Q")
    )
    spoke_layer = alt.Chart(spokes).mark_rule(color="#d9dee4").encode(x=x, y=y, x2="x2:Q", y2="y2:Q")
    label_layer = (
        alt.Chart(spokes)
        .mark_text(fontSize=11, color="#52606d")
        .encode(x=alt.X("lx:Q", scale=domain, axis=None), y=alt.Y("ly:Q", scale=domain, axis=None), text="service:N")
    )
    area = (
        alt.Chart(points).mark_area(opacity=0.12, interpolate="linear").encode(x=x, y=y, order="order:Q", color=color)
    )
    line = (
        alt.Chart(points)
        .mark_line(point=True, strokeWidth=2)
        .encode(
            x=x,
            y=y,
            order="order:Q",
            color=color,
            tooltip=[alt.Tooltip("series:N"), alt.Tooltip("service:N"), alt.Tooltip("value:Q", format=".3f")],
        )
    )
    chart = alt.layer(ring_layer, spoke_layer, label_layer, line).properties(width=size, height=size)
    del area  # filled areas hide each other when two series overlap; lines read better
    return chart.properties(title=title) if title else chart


def fan_chart(
    frame: pd.DataFrame, *, service: str, color: str, height: int = 180, y_title: str = "MB", y_max: float | None = None
) -> alt.LayerChart:
    """A forecast fan for one service: 90 % band (q05..q95), 50 % band (q25..q75), median line, truth dots.

    ``frame`` columns: ``label`` (e.g. "Tue 14:00"), ``step`` (ordering), ``q05 q25 median q75 q95`` and
    ``truth`` (NaN where unknown), in the unit of ``y_title``. ``y_max`` fixes the y range (charts shown
    side by side for comparison share one).
    """
    x = alt.X(
        "label:N",
        sort=list(frame.sort_values("step")["label"]),
        title=None,
        axis=alt.Axis(labelAngle=-45, labelOverlap=True),
    )
    base = alt.Chart(frame)
    scale = alt.Scale(domain=[0, y_max]) if y_max else alt.Undefined
    band90 = base.mark_area(opacity=0.18, color=color).encode(
        x=x, y=alt.Y("q05:Q", title=y_title, scale=scale), y2="q95:Q"
    )
    band50 = base.mark_area(opacity=0.35, color=color).encode(x=x, y="q25:Q", y2="q75:Q")
    median = base.mark_line(color=color, strokeWidth=2).encode(
        x=x,
        y="median:Q",
        order=alt.Order("step:Q"),
        tooltip=[
            alt.Tooltip("label:N", title="hour"),
            alt.Tooltip("median:Q", format=".3f", title="median MB"),
            alt.Tooltip("q05:Q", format=".3f", title="5%"),
            alt.Tooltip("q95:Q", format=".3f", title="95%"),
        ],
    )
    layers = [band90, band50, median]
    if "truth" in frame and frame["truth"].notna().any():
        layers.append(
            base.transform_filter("isValid(datum.truth)")
            .mark_point(color="#1f2933", filled=True, size=28)
            .encode(
                x=x,
                y="truth:Q",
                tooltip=[alt.Tooltip("label:N", title="hour"), alt.Tooltip("truth:Q", format=".3f", title="truth MB")],
            )
        )
    return alt.layer(*layers).properties(title=service, height=height)


def service_heatmap(
    matrix: np.ndarray,
    services: list[str] | tuple[str, ...],
    labels: list[str],
    *,
    title: str | None = None,
    unit: str = "MB",
) -> alt.Chart:
    """Hour x service heatmap of a (hours, services) matrix already in ``unit``."""
    hours, k = matrix.shape
    frame = pd.DataFrame(
        {
            "hour": np.repeat(np.arange(hours), k),
            "label": np.repeat(labels, k),
            "service": np.tile(list(services), hours),
            "value": matrix.reshape(-1),
        }
    )
    chart = (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("hour:O", title=None, axis=alt.Axis(values=list(range(0, hours, 24)), labelExpr="''")),
            y=alt.Y("service:N", sort=list(services), title=None),
            color=alt.Color("value:Q", title=unit, scale=alt.Scale(scheme="inferno", type="symlog")),
            tooltip=[
                alt.Tooltip("label:N", title="hour"),
                alt.Tooltip("service:N"),
                alt.Tooltip("value:Q", title=unit, format=".3f"),
            ],
        )
        .properties(height=22 * k + 20)
    )
    return chart.properties(title=title) if title else chart


def service_lines(
    frame: pd.DataFrame, services: list[str] | tuple[str, ...], *, y_title: str = "MB", height: int = 260
) -> alt.Chart:
    """One line per service over hours. ``frame`` columns: ``hour``, ``label``, ``service``, ``value``."""
    return (
        alt.Chart(frame)
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("hour:Q", title="hour of the data set"),
            y=alt.Y("value:Q", title=y_title),
            color=alt.Color("service:N", scale=service_scale(services), title="service"),
            tooltip=[
                alt.Tooltip("label:N", title="hour"),
                "service:N",
                alt.Tooltip("value:Q", format=".3f", title=y_title),
            ],
        )
        .properties(height=height)
    )


def bars(
    frame: pd.DataFrame,
    *,
    category: str,
    value: str,
    title: str | None = None,
    color: str = ACCENT,
    value_title: str | None = None,
) -> alt.Chart:
    """Horizontal bars sorted by value (e.g. POI counts)."""
    chart = (
        alt.Chart(frame)
        .mark_bar(color=color)
        .encode(
            y=alt.Y(f"{category}:N", sort="-x", title=None),
            x=alt.X(f"{value}:Q", title=value_title or value),
            tooltip=[f"{category}:N", f"{value}:Q"],
        )
        .properties(height=max(120, 18 * len(frame)))
    )
    return chart.properties(title=title) if title else chart

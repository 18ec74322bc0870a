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


FAN_HEADROOM = 1.5  # the y axis reaches this times the largest median, 75 % quantile or observed value
FAN_LEGEND = ("observed", "truth", "median", "50 % of paths", "90 % of paths")


def tint(color: str, amount: float) -> str:
    """``color`` (#rrggbb) mixed with white: amount 0 is the colour, 1 is white."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)


def fan_top(frame: pd.DataFrame, history: pd.DataFrame | None = None) -> tuple[float | None, bool]:
    """The fan's y-axis top and whether the 90 % band is cut there.

    Robust to a single outlier path: the axis reaches the 95 % quantile only when that is at most
    ``FAN_HEADROOM`` times the largest of the median, the 75 % quantile, the truth and the observed hours;
    beyond that the band is clipped (and the chart says so), so that one far path cannot flatten the median.
    None: nothing to scale by (all zero)."""
    core = [frame[c].max() for c in ("median", "q75", "truth") if c in frame]
    if history is not None and len(history):
        core.append(history["observed"].max())
    base = float(np.nanmax(core)) if core and np.isfinite(np.nanmax(core)) else 0.0
    q95 = float(frame["q95"].max()) if len(frame) else 0.0
    if base <= 0:
        return (q95 or None), False
    return (q95, False) if q95 <= FAN_HEADROOM * base else (FAN_HEADROOM * base, True)


def fan_chart(
    frame: pd.DataFrame,
    *,
    service: str,
    color: str,
    height: int = 180,
    y_title: str = "MB",
    y_max: float | None = None,
    history: pd.DataFrame | None = None,
) -> alt.LayerChart:
    """A forecast fan for one service: 90 % band (q05..q95), 50 % band (q25..q75), median line, truth dots,
    and the observed hours before the start (``history``: ``label``, ``step`` < 0, ``observed``) as a grey
    line, with a legend.

    ``frame`` columns: ``label`` (e.g. "Tue 14:00"), ``step`` (ordering), ``q05 q25 median q75 q95`` and
    ``truth`` (NaN where unknown), in the unit of ``y_title``. ``y_max`` fixes the y range (charts shown
    side by side for comparison share one); by default ``fan_top``, with "(90 % band clipped at ...)" in the
    title when the band goes beyond it. Tooltips: the hour and values to 3 significant digits.
    """
    history = history if history is not None and len(history) else None
    order = ([] if history is None else list(history.sort_values("step")["label"])) + list(
        frame.sort_values("step")["label"]
    )
    x = alt.X("label:N", sort=order, title=None, axis=alt.Axis(labelAngle=-45, labelOverlap=True))
    clipped = False
    if y_max is None:
        y_max, clipped = fan_top(frame, history)
    scale = alt.Scale(domain=[0, y_max], clamp=True) if y_max else alt.Undefined
    colours = {
        "observed": GREY,
        "truth": "#1f2933",
        "median": color,
        "50 % of paths": tint(color, 0.45),
        "90 % of paths": tint(color, 0.78),
    }
    shown = [name for name in FAN_LEGEND if name != "observed" or history is not None]
    if "truth" not in frame or not frame["truth"].notna().any():
        shown.remove("truth")
    legend = alt.Color(
        "series:N",
        scale=alt.Scale(domain=shown, range=[colours[name] for name in shown]),
        legend=alt.Legend(title=None, orient="top", symbolType="square"),
    )

    def series(chart: alt.Chart, name: str) -> alt.Chart:
        return chart.transform_calculate(series=f"'{name}'")

    def tip(field: str, name: str) -> alt.Tooltip:
        return alt.Tooltip(f"{field}:Q", format=".3r", title=f"{name} ({y_title})")

    base = alt.Chart(frame)
    hour = alt.Tooltip("label:N", title="hour")
    band90 = (
        series(base, "90 % of paths")
        .mark_area(clip=True)
        .encode(
            x=x,
            y=alt.Y("q05:Q", title=y_title, scale=scale),
            y2="q95:Q",
            color=legend,
            tooltip=[hour, tip("q05", "5 %"), tip("q95", "95 %")],
        )
    )
    band50 = (
        series(base, "50 % of paths")
        .mark_area(clip=True)
        .encode(
            x=x,
            y=alt.Y("q25:Q", scale=scale),
            y2="q75:Q",
            color=legend,
            tooltip=[hour, tip("q25", "25 %"), tip("q75", "75 %")],
        )
    )
    median = (
        series(base, "median")
        .mark_line(strokeWidth=2, clip=True)
        .encode(
            x=x,
            y=alt.Y("median:Q", scale=scale),
            order=alt.Order("step:Q"),
            color=legend,
            tooltip=[hour, tip("median", "median"), tip("q05", "5 %"), tip("q95", "95 %")],
        )
    )
    layers: list[alt.Chart] = [band90, band50, median]
    if history is not None:
        observed = (
            series(alt.Chart(history), "observed")
            .mark_line(strokeWidth=1.5, clip=True)
            .encode(
                x=x,
                y=alt.Y("observed:Q", scale=scale),
                order=alt.Order("step:Q"),
                color=legend,
                tooltip=[hour, tip("observed", "observed")],
            )
        )
        layers.insert(0, observed)
    if "truth" in shown:
        truth = (
            series(base.transform_filter("isValid(datum.truth)"), "truth")
            .mark_point(filled=True, size=28, opacity=1, clip=True)
            .encode(x=x, y=alt.Y("truth:Q", scale=scale), color=legend, tooltip=[hour, tip("truth", "truth")])
        )
        layers.append(truth)
    title: str | alt.TitleParams = service
    if clipped and y_max:
        title = alt.TitleParams(service, subtitle=f"90 % band clipped at {y_max:.3g} {y_title}")
    return alt.layer(*layers).properties(title=title, height=height)


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

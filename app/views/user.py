"""User page: one user's traffic history (heatmap, per-service series), service mix, places and past
forecast runs. Deep link: ?user=KEY. The logic lives in app/user_data.py."""

from __future__ import annotations

import streamlit as st

from app import jobs_ui
from app import user_data as ud
from app.common import (
    database,
    format_bytes,
    md_escape,
    page_header,
    query_str,
    revision,
    set_query,
)

info = jobs_ui.require_dataset()
url = database().url
noun = info.entity_kind  # "user", or "cell" for data sets that model cells
page_header(
    "User", f"One {noun}'s hourly traffic per service, where they were, and their forecasts · data set **{info.label}**"
)

keys = ud.cached_entity_keys(url, info.id, revision())
if not keys:
    st.info(f"The data set **{info.label}** has no {noun}s.", icon=":material/person_off:")
    st.stop()

# Deep link -> picker: a ?user= that differs from the last one applied (a new link) selects that user.
wanted = query_str("user")
if wanted is not None and wanted not in keys:
    st.warning(f"No {noun} {md_escape(wanted)} in data set **{info.label}**; pick one below.")
    wanted = None
if "user_key" not in st.session_state or (wanted and wanted != st.session_state.get("_user_query")):
    st.session_state["user_key"] = wanted or keys[0]
key = st.selectbox(noun.capitalize(), keys, key="user_key", help="Type to search by key.")
st.session_state["_user_query"] = key
set_query(user=key)

loaded = ud.cached_user(url, info.id, revision(), key, info.hours, len(info.services))
if loaded is None:  # deleted since the key list was cached
    st.error(f"{noun.capitalize()} {md_escape(key)} is no longer in the data set; reload the page.")
    st.stop()
user, matrix, places = loaded

summary = ud.usage_summary(matrix, places)
persona = user.attrs.get("persona")  # synthetic city only
columns = st.columns(5 if persona else 4)
columns[0].metric("Total traffic", format_bytes(summary["total_bytes"]))
columns[1].metric("Mean per hour", format_bytes(summary["mean_bytes_per_hour"]))
columns[2].metric("Active hours", f"{summary['active_share']:.0%}", help="Hours with any traffic.")
columns[3].metric("Cells visited", summary["cells"])
if persona:
    columns[4].metric(
        "Persona", str(persona).replace("_", " "), help="The routine the synthetic user was generated with."
    )

# --- history -----------------------------------------------------------------------------------------
st.subheader("Traffic by hour and service")
weeks = ud.week_starts(info.hours)
if len(weeks) > 1:
    week = st.selectbox(
        "Week",
        weeks,
        index=len(weeks) - 1,
        format_func=lambda h: ud.week_label(info.time_origin, h),
        key="user_week",
        help="The heatmap shows one week (168 hours); the last full week by default.",
    )
else:
    week = 0
span = ud.WEEK if weeks else info.hours
st.altair_chart(ud.heatmap_chart(matrix, info.services, info.time_origin, week, span), theme=None, width="stretch")
st.caption(
    "MB per hour; colour on a symmetric-log scale so that quiet hours stay visible. "
    "Columns are hours (one tick per day); hover for the time."
)

st.subheader("Hourly traffic per service")
st.altair_chart(ud.series_chart(matrix, info.services, info.time_origin), theme=None, width="stretch")

left, right = st.columns([2, 3])
with left:
    st.subheader("Service mix")
    mix = ud.service_mix(matrix, info.services, info.time_origin)
    if mix.empty:
        st.info(f"This {noun} used no traffic in the data set.")
    else:
        st.altair_chart(ud.mix_chart(mix, info.services), theme=None, width="stretch")
        st.caption("Each service's share of the total traffic, on weekdays and at weekends.")
with right:
    st.subheader("Places")
    if places.empty:
        st.info(f"No locations are recorded for this {noun}.")
    else:
        st.dataframe(
            places,
            hide_index=True,
            width="stretch",
            height=320,
            # The share comes right after the cell, as a short percentage: in this half-width column a
            # progress bar at the end of six columns was cut off (issue 19).
            column_order=["link", "share", "hours", "name", "role", "land_use"],
            column_config={
                "link": st.column_config.LinkColumn(
                    "Cell", display_text=r"cell\?cell=(.*)", help="Opens the cell's page.", width="small"
                ),
                "share": st.column_config.NumberColumn(
                    "Share", format="percent", width="small", help="Share of the hours the user was in this cell."
                ),
                "hours": st.column_config.NumberColumn(
                    "Hours", width="small", help="Hours the user was attached to this cell."
                ),
                "name": "Name",
                "role": "Role",
                "land_use": "Land use",
            },
        )

if not places.empty:
    st.markdown("**Top places**")
    for column, place in zip(st.columns(3), places.head(3).itertuples(), strict=False):
        with column:
            role = f" · {place.role}" if place.role else ""
            if st.button(
                f"{place.name}{role}",
                key=f"user_place_{place.cell}",
                icon=":material/cell_tower:",
                width="stretch",
                help=f"Open cell {place.cell} ({place.land_use}): {place.share:.0%} of this {noun}'s hours",
            ):
                st.switch_page(ud.page_file("cell"), query_params={"cell": place.cell})

# --- forecasts ---------------------------------------------------------------------------------------
st.subheader("Forecast runs")
runs = ud.cached_user_runs(url, info.id, revision(), noun, key, info.time_origin)
if runs.empty:
    st.info(f"No forecasts of this {noun} yet.", icon=":material/insights:")
else:
    st.dataframe(
        runs,
        hide_index=True,
        width="stretch",
        column_config={
            "run": "Run",
            "created": st.column_config.DatetimeColumn("Created (UTC)", format="YYYY-MM-DD HH:mm"),
            "start": "Start",
            "horizon_h": st.column_config.NumberColumn("Horizon", format="%d h"),
            "users": "Users",
            "samples": "Samples",
            "sampler": "Sampler",
            "location": "Location",
            "guidance": "Guidance",
            "seed": "Seed",
            "model": "Model",
            "seconds": st.column_config.NumberColumn("Seconds", format="%.1f"),
            "open": st.column_config.LinkColumn("Open", display_text="open on Forecast"),
        },
    )
if st.button(f"Forecast this {noun}", icon=":material/insights:", key="user_forecast"):
    st.switch_page(ud.page_file("forecast"), query_params={"user": key})

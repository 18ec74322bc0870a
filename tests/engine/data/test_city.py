from __future__ import annotations

import numpy as np
import pytest

from engine.data.city import (
    LAND_USES,
    POI_CATEGORIES,
    REAL_EMPTY_SHARE,
    REAL_LOG_TOTAL_MEAN,
    REAL_LOG_TOTAL_SD,
    REAL_POI_SHARE,
    SERVICES,
    CityConfig,
    _traffic,
    generate_city,
)
from engine.errors import InputError

SMALL = dict(users=120, cells=160)


def _dense(content) -> np.ndarray:
    out = np.zeros((len(content.entity_keys), content.hours, len(content.services)))
    out[content.traffic_entity, content.traffic_hour, content.traffic_service] = content.traffic_bytes
    return out


def _locations(content) -> np.ndarray:
    out = np.full((len(content.entity_keys), content.hours), -1)
    out[content.location_entity, content.location_hour] = content.location_cell
    return out


@pytest.fixture(scope="module")
def city():
    return generate_city(CityConfig(**SMALL, seed=7))


def test_same_seed_gives_the_same_city_and_another_seed_another(city):
    again = generate_city(CityConfig(**SMALL, seed=7))
    other = generate_city(CityConfig(**SMALL, seed=8))
    assert np.array_equal(_dense(city), _dense(again))
    assert np.array_equal(city.cell_poi, again.cell_poi) and city.cell_land_use == again.cell_land_use
    assert not np.array_equal(city.cell_poi, other.cell_poi)
    assert not np.array_equal(_dense(city), _dense(other))


def test_city_covers_two_weeks_of_every_user_with_a_cell_each_hour(city):
    assert city.hours == 14 * 24 and city.services == SERVICES and city.poi_categories == POI_CATEGORIES
    locations = _locations(city)
    assert (locations >= 0).all() and (locations < len(city.cell_keys)).all()
    assert city.time_origin.weekday() == 0  # hour 0 is Monday 00:00


def test_cells_lie_within_the_city_radius_around_the_centre():
    config = CityConfig(**SMALL, seed=1)
    city = generate_city(config)
    dlat_km = (city.cell_lat - config.center[0]) * 110.574
    dlon_km = (city.cell_lon - config.center[1]) * 111.320 * np.cos(np.radians(config.center[0]))
    assert np.hypot(dlat_km, dlon_km).max() <= config.radius_km * 1.05
    assert np.hypot(dlat_km, dlon_km).max() >= config.radius_km * 0.7  # it fills the city


def test_land_use_is_spatially_coherent_and_complete(city):
    xy = np.array([[a["x_km"], a["y_km"]] for a in city.cell_attrs])
    land_use = np.array(city.cell_land_use)
    assert set(land_use) == set(LAND_USES)
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    agreement = (land_use[d.argmin(1)] == land_use).mean()
    _, counts = np.unique(land_use, return_counts=True)
    chance = ((counts / counts.sum()) ** 2).sum()
    assert agreement > chance + 0.2, (agreement, chance)


def test_poi_counts_are_calibrated_against_the_real_base_stations():
    pois = np.concatenate([generate_city(CityConfig(users=5, cells=400, seed=s)).cell_poi for s in range(4)])
    totals = pois.sum(1)
    share = pois.sum(0) / pois.sum()
    assert np.abs(share - REAL_POI_SHARE).max() < 0.06, dict(zip(POI_CATEGORIES, np.round(share, 3), strict=True))
    assert abs((totals == 0).mean() - REAL_EMPTY_SHARE) < 0.03
    log_totals = np.log(totals[totals > 0])
    assert abs(log_totals.mean() - REAL_LOG_TOTAL_MEAN) < 0.3
    assert abs(log_totals.std() - REAL_LOG_TOTAL_SD) < 0.3


def test_poi_composition_follows_land_use(city):
    land_use = np.array(city.cell_land_use)
    share = city.cell_poi / np.maximum(city.cell_poi.sum(1, keepdims=True), 1)
    col = {name: i for i, name in enumerate(POI_CATEGORIES)}
    for lu, category in [
        ("transport", "Transportation hub"),
        ("industrial", "Factory"),
        ("university", "Education"),
        ("park", "Scenic spot"),
        ("residential", "Residence"),
    ]:
        inside = share[land_use == lu, col[category]].mean()
        outside = share[land_use != lu, col[category]].mean()
        assert inside > 2 * outside, (lu, inside, outside)


def test_weekday_commutes_pass_through_a_transport_hub(city):
    land_use = np.array(city.cell_land_use)
    locations = _locations(city)
    commuters = [i for i, a in enumerate(city.entity_attrs) if a["work"] is not None]
    hub_hours = np.isin(locations[commuters, :120], np.flatnonzero(land_use == "transport"))
    assert hub_hours.any(axis=1).mean() > 0.95  # Monday..Friday
    weekday_at_work = np.mean(
        [
            (locations[i, 24 * d + 10] == city.cell_keys.index(city.entity_attrs[i]["work"]))
            for i in commuters
            for d in range(5)
        ]
    )
    weekend_at_work = np.mean(
        [
            (locations[i, 24 * d + 10] == city.cell_keys.index(city.entity_attrs[i]["work"]))
            for i in commuters
            for d in (5, 6)
        ]
    )
    assert weekday_at_work > 0.6 and weekend_at_work < 0.2


def test_traffic_magnitudes_zero_hours_and_heavy_tails_look_like_the_real_trace(city):
    traffic = _dense(city)
    per_user_hour = traffic.sum(-1)
    assert 0.2e6 < per_user_hour.mean() < 1.5e6  # real: about 0.46 MB per user-hour
    assert 0.15 < (per_user_hour == 0).mean() < 0.6
    assert (traffic == 0).mean() > 0.6  # most user-hour-services are zero
    nonzero = traffic[traffic > 0]
    assert nonzero.max() / np.median(nonzero) > 100  # heavy tail
    users = traffic.sum((1, 2))
    assert users.max() > 5 * np.median(users)  # very uneven users
    night = per_user_hour.reshape(len(users), -1, 24)[:, :, 3:5].mean()
    evening = per_user_hour.reshape(len(users), -1, 24)[:, :, 20:22].mean()
    assert evening > 4 * night


def test_services_have_their_own_daily_rhythms(city):
    by_hour = _dense(city).sum(0).reshape(-1, 24, len(SERVICES))[:5].sum(0)
    share = by_hour / by_hour.sum(0, keepdims=True)
    s = {name: i for i, name in enumerate(SERVICES)}
    assert share[7:9, s["News"]].sum() > share[7:9, s["Entertainment"]].sum()
    assert share[20:23, s["Entertainment"]].sum() > share[20:23, s["News"]].sum()


def _hub_navigation_share(content) -> tuple[float, float]:
    traffic = _dense(content)
    locations = _locations(content)
    at_hub = np.isin(locations, [i for i, lu in enumerate(content.cell_land_use) if lu == "transport"])
    # Compare the same hours only: hubs are visited at commute hours, when Navigation peaks anyway.
    hour = np.arange(content.hours) % 24
    commute = np.broadcast_to(np.isin(hour, [6, 7, 8, 9, 17, 18, 19, 20]), at_hub.shape)
    nav = SERVICES.index("Navigation")

    def share(mask):
        return traffic[mask][:, nav].sum() / traffic[mask].sum()

    return share(at_hub & commute), share(~at_hub & commute)


def test_environment_shapes_service_use_and_env_effect_zero_removes_it():
    hub, elsewhere = _hub_navigation_share(generate_city(CityConfig(users=200, cells=160, seed=3)))
    assert hub > 2 * elsewhere
    hub0, elsewhere0 = _hub_navigation_share(generate_city(CityConfig(users=200, cells=160, seed=3, env_effect=0)))
    assert 0.67 < hub0 / elsewhere0 < 1.5


def test_with_env_effect_zero_traffic_does_not_depend_on_the_environment_at_all(city):
    rng_state = 11
    n_users = len(city.entity_keys)
    locations = _locations(city)
    users = [{"persona": a["persona"]} for a in city.entity_attrs]
    land_use = np.array([LAND_USES.index(lu) for lu in city.cell_land_use])
    shuffled = np.random.default_rng(0).permutation(len(land_use))
    config = CityConfig(users=n_users, cells=len(land_use), env_effect=0.0)
    a = _traffic(np.random.default_rng(rng_state), users, locations, land_use, city.cell_poi, config)
    b = _traffic(np.random.default_rng(rng_state), users, locations, land_use[shuffled], city.cell_poi[::-1], config)
    assert np.array_equal(a, b)
    config.env_effect = 1.0
    c = _traffic(np.random.default_rng(rng_state), users, locations, land_use, city.cell_poi, config)
    d = _traffic(np.random.default_rng(rng_state), users, locations, land_use[shuffled], city.cell_poi[::-1], config)
    assert not np.array_equal(c, d)


def test_env_effect_does_not_change_where_people_go():
    a = generate_city(CityConfig(**SMALL, seed=5))
    b = generate_city(CityConfig(**SMALL, seed=5, env_effect=0.0))
    assert np.array_equal(_locations(a), _locations(b))
    assert np.array_equal(a.cell_poi, b.cell_poi)


@pytest.mark.parametrize("field,value", [("users", 0), ("cells", 3), ("env_effect", -1.0), ("radius_km", 0.0)])
def test_invalid_configuration_names_the_field(field, value):
    with pytest.raises(InputError, match=f"field '{field}'"):
        generate_city(CityConfig(**{field: value}))


@pytest.mark.parametrize("cells", [8, 9, 12, 16])
def test_tiny_cities_still_build_with_every_user_placed(cells):
    for seed in range(4):
        city = generate_city(CityConfig(users=15, cells=cells, seed=seed))
        assert (_locations(city) >= 0).all() and len(city.cell_keys) == cells

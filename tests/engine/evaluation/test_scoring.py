from __future__ import annotations

import numpy as np
import pytest

from db import open_database
from db.queries import get_dataset, store_dataset
from engine.data.city import CityConfig, generate_city
from engine.data.windows import Normaliser, SplitSpec, load_series, make_splits
from engine.errors import InputError
from engine.evaluation.scoring import WINDOW_KEYS, export_windows, score_predictions


@pytest.fixture(scope="module")
def city_series(tmp_path_factory):
    db_file = tmp_path_factory.mktemp("scoring") / "city.sqlite"
    database = open_database(str(db_file))
    with database.write_session() as session, session.begin():
        store_dataset(session, generate_city(CityConfig(users=12, cells=16, seed=3)))
    with database.session() as session:
        series = load_series(session, get_dataset(session))
    database.dispose()
    return series


@pytest.fixture
def exported(city_series, tmp_path):
    spec = SplitSpec(history=24, horizon=2)
    splits = make_splits(city_series, spec)
    normaliser = Normaliser.fit(city_series.traffic[:, : splits.train_hours_end])
    path = tmp_path / "windows.npz"
    summary = export_windows(city_series, normaliser, splits, path)
    return path, summary, splits, normaliser


def _save(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def test_export_writes_every_documented_key_with_consistent_shapes(exported, city_series):
    path, summary, splits, normaliser = exported
    assert summary["windows"] == {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    with np.load(path) as data:
        assert set(data.files) == set(WINDOW_KEYS)
        n = len(splits.train) + len(splits.val) + len(splits.test)
        k = len(city_series.services)
        assert data["history"].shape == (n, 24, k) and data["target"].shape == (n, 2, k)
        assert data["hour_of_day"].shape == (n, 26) and data["day_of_week"].shape == (n, 26)
        assert data["env"].shape == (n, 26, 0)
        assert list(data["split"][: len(splits.train)]) == ["train"] * len(splits.train)
        assert set(data["split"]) == {"train", "val", "test"}
        assert list(data["services"]) == city_series.services
        assert float(data["scale"]) == pytest.approx(normaliser.scale)
        assert int(data["history_hours"]) == 24 and int(data["horizon"]) == 2
        assert str(data["dataset"]) == city_series.dataset_name
        # the first test window: its target is the normalised traffic at its target hours
        first = int(np.flatnonzero(data["split"] == "test")[0])
        row = city_series.entity_keys.index(str(data["entity_key"][first]))
        hour = int(data["target_hour"][first])
        expected = normaliser.forward(city_series.traffic[row, hour : hour + 2])
        assert np.allclose(data["target"][first], expected)
        assert np.allclose(data["history"][first], normaliser.forward(city_series.traffic[row, hour - 24 : hour]))


def test_a_perfect_prediction_of_the_test_windows_scores_r2_one(exported, tmp_path):
    path, *_ = exported
    with np.load(path) as data:
        truth = data["target"][data["split"] == "test"]
        all_targets = data["target"]
    result = score_predictions(_save(tmp_path / "p.npz", prediction=truth, method=np.asarray("oracle")), path)
    assert result["method"] == "oracle" and result["aligned"] == "test"
    assert result["r2"] == pytest.approx(1.0) and result["mse"] == 0 and result["crps"] == 0
    assert all(v == pytest.approx(1.0) for v in result["per_service_r2"].values() if v is not None)
    # the same, covering all exported windows: only the test rows are scored
    result = score_predictions(_save(tmp_path / "all.npz", samples=np.stack([all_targets] * 3)), path)
    assert result["aligned"] == "all" and result["samples"] == 3 and result["r2"] == pytest.approx(1.0)
    assert result["method"] == "all"  # the file's stem when no method is given


def test_noisy_samples_score_worse_than_perfect(exported, tmp_path):
    path, *_ = exported
    with np.load(path) as data:
        truth = data["target"][data["split"] == "test"]
    noisy = truth[None] + np.random.default_rng(0).normal(scale=0.1, size=(20, *truth.shape))
    result = score_predictions(_save(tmp_path / "n.npz", samples=noisy), path)
    assert result["mse"] > 0 and result["r2"] < 1 and result["crps"] > 0 and result["cov90"] > 0.9
    assert set(result) >= {"mse", "rmse", "mae", "cs", "r2", "crps", "cov50", "cov90", "per_service_r2"}


def test_shape_mismatch_names_the_file_and_key(exported, tmp_path):
    path, _, splits, _ = exported
    wrong = _save(tmp_path / "wrong.npz", prediction=np.zeros((len(splits.test), 1, 10)))  # horizon is 2
    with pytest.raises(InputError) as caught:
        score_predictions(wrong, path)
    assert caught.value.field == "prediction" and caught.value.file == str(wrong)
    assert "wrong.npz" in str(caught.value) and "expected shape" in str(caught.value)
    with pytest.raises(InputError, match="samples"):
        score_predictions(_save(tmp_path / "s.npz", samples=np.zeros((len(splits.test), 2, 10))), path)


def test_nan_predictions_are_rejected_with_their_position(exported, tmp_path):
    path, _, splits, _ = exported
    prediction = np.zeros((len(splits.test), 2, 10))
    prediction[3, 1, 4] = np.nan
    with pytest.raises(InputError, match=r"1 value\(s\) are NaN or infinite \(first at index \(3, 1, 4\)\)") as caught:
        score_predictions(_save(tmp_path / "nan.npz", prediction=prediction), path)
    assert caught.value.field == "prediction"


def test_missing_keys_and_unreadable_files_are_input_errors(exported, tmp_path):
    path, _, splits, _ = exported
    with pytest.raises(InputError, match="exactly one of"):
        score_predictions(_save(tmp_path / "none.npz", other=np.zeros(3)), path)
    both = _save(
        tmp_path / "both.npz",
        prediction=np.zeros((len(splits.test), 2, 10)),
        samples=np.zeros((1, len(splits.test), 2, 10)),
    )
    with pytest.raises(InputError, match="exactly one of"):
        score_predictions(both, path)
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a zip")
    with pytest.raises(InputError, match="not a readable"):
        score_predictions(garbage, path)
    with pytest.raises(InputError, match="no such file"):
        score_predictions(tmp_path / "absent.npz", path)
    with pytest.raises(InputError, match="not a windows export"):
        score_predictions(_save(tmp_path / "p.npz", prediction=np.zeros(3)), _save(tmp_path / "w.npz", x=np.ones(2)))

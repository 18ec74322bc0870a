"""`lsdm ingest matrix` (engine/data/ingest_matrix.py): wide entity x time matrices, one per service, cells as
entities, optional environment vectors registered as an external encoder; resampling of shorter steps to
hours; refusals that name the file, row or field and store nothing; the real Beijing week where
../shared/data is present."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from cli.main import main as lsdm
from db import open_database
from db.queries import load_env_embeddings
from engine.data.ingest_matrix import read_matrix
from engine.data.windows import load_series
from engine.requests import IngestMatrixRequest


def _sql(db: Path, query: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(query, args).fetchall()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 1000, size=(5, 72)).astype(float)
    web = rng.integers(0, 50, size=(5, 72)).astype(float)
    np.savez(tmp_path / "traffic.npz", video=video, web=web, kge=rng.normal(size=(5, 8)).astype(np.float32))
    np.save(tmp_path / "web.npy", web)
    return {"npz": tmp_path / "traffic.npz", "npy": tmp_path / "web.npy", "video": video, "web": web}


def test_two_services_and_the_vectors_are_stored_as_given(files, db_path, capsys):
    npz = files["npz"]
    argv = ["ingest", "matrix", "--db", str(db_path), "--values", f"{npz}:video", "--values", str(files["npy"])]
    argv += ["--services", "Video,Web", "--embeddings", f"{npz}:kge", "--start", "2024-01-01T00:00", "--json"]
    assert lsdm(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["entity_kind"] == "cell" and summary["entities"] == summary["cells"] == 5
    assert summary["hours"] == 72 and summary["services"] == ["Video", "Web"]
    database = open_database(str(db_path))
    with database.session() as session:
        from db.queries import get_dataset

        dataset = get_dataset(session)
        series = load_series(session, dataset)
        _ids, vectors = load_env_embeddings(session, dataset)
    np.testing.assert_array_equal(series.traffic[:, :, 0], files["video"])
    np.testing.assert_array_equal(series.traffic[:, :, 1], files["web"])
    assert series.entity_keys == ["cell0", "cell1", "cell2", "cell3", "cell4"]
    assert (series.location == np.arange(5)[:, None]).all()  # each entity is its own cell at every hour
    with np.load(npz) as archive:
        np.testing.assert_array_equal(vectors, archive["kge"])  # the vectors are z_env as they are
    assert series.env.shape == (5, 8)
    ((name, config, active),) = _sql(db_path, "SELECT name, config, is_active FROM models WHERE kind = 'clip'")
    assert name.startswith("external-") and json.loads(config)["external"] and active == 1
    assert dataset.time_origin == datetime(2024, 1, 1)


def test_quarter_hours_are_summed_to_calendar_hours_and_the_partial_ones_dropped(tmp_path):
    steps = np.arange(2 * 4 * 26, dtype=float).reshape(2, 4 * 26)  # 26 hours of 15-minute steps
    np.save(tmp_path / "q.npy", steps)
    # starting at 00:30: two steps before 01:00 dropped, then 25 whole hours, then the last two steps dropped
    content = read_matrix((str(tmp_path / "q.npy"),), start="2024-03-04T00:30", step="15min", unit_bytes=1000)
    assert content.hours == 25 and content.time_origin == datetime(2024, 3, 4, 1, 0)
    assert content.params["dropped_steps"] == {"before_the_first_hour": 2, "after_the_last_hour": 2}
    expected = steps[:, 2 : 2 + 100].reshape(2, 25, 4).sum(axis=2) * 1000
    got = np.zeros((2, 25))
    got[content.traffic_entity, content.traffic_hour] = content.traffic_bytes
    np.testing.assert_array_equal(got, expected)


def test_a_csv_matrix_keeps_its_keys_and_a_start_with_an_offset_is_local_time(tmp_path):
    (tmp_path / "m.csv").write_text("station,t0,t1\nA7,1.5,2\nB2,0,4\n")
    content = read_matrix(
        (str(tmp_path / "m.csv"),), start="2024-01-01T00:00+00:00", timezone="Asia/Shanghai", unit_bytes=2
    )
    assert content.entity_keys == content.cell_keys == ["A7", "B2"] and content.services == ["m"]
    assert content.time_origin == datetime(2024, 1, 1, 8, 0)  # UTC midnight is 08:00 in Shanghai
    assert sorted(zip(content.traffic_entity, content.traffic_hour, content.traffic_bytes, strict=True)) == [
        (0, 0, 3),
        (0, 1, 4),
        (1, 1, 8),
    ]


@pytest.mark.parametrize(
    ("make", "argv", "field", "words"),
    [
        (lambda d: np.save(d / "a.npy", -np.ones((2, 30))), [], "values", "row 0, column 0: negative"),
        (lambda d: np.save(d / "a.npy", np.full((2, 30), np.nan)), [], "values", "not a finite number"),
        (lambda d: np.save(d / "a.npy", np.ones(30)), [], "values", "expected a 2-D array"),
        (lambda d: np.savez(d / "a.npz", x=np.ones((2, 3)), y=np.ones((2, 3))), [], "values", "name one as a.npz:KEY"),
        (lambda d: np.save(d / "a.npy", np.ones((2, 30))), ["--start", "2024-01-01T00:07"], "start", "step boundary"),
        (lambda d: np.save(d / "a.npy", np.ones((2, 30))), ["--start", "yesterday"], "start", "ISO 8601"),
        (lambda d: np.save(d / "a.npy", np.ones((2, 30))), ["--services", "A,B"], "services", "one per matrix"),
        (lambda d: np.save(d / "a.npy", np.ones((2, 30))), ["--step", "5min"], "step", "expected one of"),
        (lambda d: np.save(d / "a.npy", np.ones((2, 30))), ["--timezone", "Mars/Base"], "timezone", "IANA"),
        (lambda d: (d / "a.csv").write_text("id,t0\nA,1\nA,2\n"), [], "values", "appears twice"),
        (lambda d: (d / "a.csv").write_text("id,t0\nA,1\nB,x\n"), [], "values", "a.csv:3: column 't0'"),
        (
            lambda d: (np.save(d / "a.npy", np.ones((2, 30))), np.save(d / "e.npy", np.ones((3, 4)))),
            ["--embeddings", "{d}/e.npy"],
            "embeddings",
            "has 3 rows",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
    tmp_path, db_path, make, argv, field, words, capsys
):
    make(tmp_path)
    source = tmp_path / (
        "a.csv" if (tmp_path / "a.csv").exists() else "a.npz" if (tmp_path / "a.npz").exists() else "a.npy"
    )
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    start = [] if "--start" in argv else ["--start", "2024-01-01T00:00"]
    code = lsdm(["ingest", "matrix", "--db", str(db_path), "--values", str(source), *start, *argv])
    err = capsys.readouterr().err
    assert code != 0 and words in err, err
    assert f"--{field}" in err or f"{source.name}" in err  # the flag that set the field, or the file
    assert not db_path.exists() or _sql(db_path, "SELECT COUNT(*) FROM datasets") == [(0,)]


def test_a_bad_upload_is_refused_when_submitted_naming_the_uploaded_file(tmp_path, db_path):
    """Issue 19: a matrix is read when the job is submitted (files up to 50 MB: well under a second), so a
    bad one is refused on the form with the upload's own name, and nothing is queued."""
    from engine.errors import InputError
    from engine.jobs import enqueue, list_jobs

    np.save(tmp_path / "upload.npy", -np.ones((2, 30)))
    database = open_database(str(db_path))
    with pytest.raises(InputError) as refused:
        enqueue(
            database,
            "ingest.matrix",
            IngestMatrixRequest(
                values=(str(tmp_path / "upload.npy"),),
                start="2024-01-01T00:00",
                names={str(tmp_path / "upload.npy"): "mine.npy"},
            ).to_params(),
        )
    assert refused.value.field == "values" and "negative" in str(refused.value)
    assert "mine.npy" in str(refused.value) and str(tmp_path) not in str(refused.value)
    assert list_jobs(database) == []
    database.dispose()


def test_the_real_beijing_week_ingests_with_its_station_vectors(shared_data, db_path, capsys):
    npz = shared_data / "beijing_5g" / "beijing.npz"
    argv = ["ingest", "matrix", "--db", str(db_path), "--values", f"{npz}:bs_record", "--embeddings", f"{npz}:bs_kge"]
    assert lsdm([*argv, "--start", "2024-01-01T00:00", "--name", "beijing", "--services", "5G", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["entities"] == 960 and summary["hours"] == 168
    with np.load(npz) as archive:
        record, kge = archive["bs_record"], archive["bs_kge"]
    database = open_database(str(db_path))
    with database.session() as session:
        from db.queries import get_dataset

        dataset = get_dataset(session)
        series = load_series(session, dataset)
    np.testing.assert_array_equal(series.traffic[:, :, 0], np.rint(record))
    np.testing.assert_array_equal(series.env, kge)

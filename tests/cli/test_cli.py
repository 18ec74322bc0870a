"""The `lsdm` command line, run in-process through cli.main.main on real SQLite files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli.main import build_parser, main


def _json(capsys) -> dict:  # noqa: ANN001
    return json.loads(capsys.readouterr().out)


def test_city_build_then_data_info_reports_the_city(db_path, capsys):
    assert main(["city", "build", "--users", "40", "--cells", "30", "--seed", "2", "--db", str(db_path), "--json"]) == 0
    built = _json(capsys)
    assert built["dataset"] == "synthetic-seed2" and built["seconds"] > 0
    assert main(["data", "info", "--db", str(db_path), "--json"]) == 0
    info = _json(capsys)
    assert info["users"] == 40 and info["cells"] == 30 and info["hours"] == 336
    assert len(info["services"]) == 10 and info["services"][4] == "Social Networking"
    assert len(info["poi_categories"]) == 17
    assert info["total_bytes"] > 0 and isinstance(info["total_bytes"], int)
    assert info["params"]["seed"] == 2


def test_lsdm_db_environment_variable_selects_the_database(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LSDM_DB", str(tmp_path / "via-env.sqlite"))
    assert main(["city", "build", "--users", "5", "--cells", "10", "--json"]) == 0
    assert (tmp_path / "via-env.sqlite").exists()
    assert "via-env.sqlite" in _json(capsys)["db"]


def test_default_database_lives_in_the_per_user_data_directory(tmp_path, capsys):
    assert main(["city", "build", "--users", "5", "--cells", "10"]) == 0
    assert (tmp_path / "home" / "lsdm.sqlite").exists()  # LSDM_HOME set by conftest
    assert "Built synthetic city" in capsys.readouterr().out


def test_rebuilding_a_city_replaces_it_and_data_use_switches_the_active_one(db_path, capsys):
    for seed in (1, 2, 1):
        assert main(["city", "build", "--users", "5", "--cells", "10", "--seed", str(seed), "--db", str(db_path)]) == 0
    capsys.readouterr()
    assert main(["data", "list", "--db", str(db_path), "--json"]) == 0
    listing = _json(capsys)["datasets"]
    assert [d["name"] for d in listing] == ["synthetic-seed2", "synthetic-seed1"]
    assert [d["active"] for d in listing] == [False, True]
    assert main(["data", "use", "synthetic-seed2", "--db", str(db_path)]) == 0
    capsys.readouterr()
    assert main(["data", "info", "--db", str(db_path), "--json"]) == 0
    assert _json(capsys)["dataset"] == "synthetic-seed2"


def test_data_info_on_an_empty_database_says_what_to_do(db_path, capsys):
    assert main(["data", "info", "--db", str(db_path)]) == 2
    assert "lsdm city build" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["city", "build", "--users", "0"], "--users: expected a number > 0, got 0"),
        (["city", "build", "--cells", "many"], "--cells: expected a whole number, got 'many'"),
        (["city", "build", "--env-effect", "-1"], "--env-effect: expected a number >= 0"),
        (["city", "build", "--center", "31.2"], "--center: expected LAT,LON"),
        (["ingest", "tsinghua", "--trace", "/nonexistent/trace.txt"], "no such file: /nonexistent/trace.txt"),
    ],
)
def test_bad_flags_exit_2_and_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_subcommand_has_help_and_db_and_reporting_ones_have_json():
    parser = build_parser()
    subcommands = [("city", "build"), ("ingest", "tsinghua"), ("ingest", "table"), ("data", "info"),
                   ("data", "list"), ("data", "use")]
    for group, action in subcommands:
        help_text = subprocess.run(
            [sys.executable, "-m", "cli.main", group, action, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "--db" in help_text, (group, action)
        if (group, action) != ("data", "use"):
            assert "--json" in help_text, (group, action)
    assert parser.prog == "lsdm"

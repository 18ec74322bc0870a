"""The `lsdm` command line, run in-process through cli.main.main on real SQLite files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli.main import build_parser, main


def _json(capsys) -> dict:
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


def test_rebuilding_a_city_asks_before_replacing_and_data_use_switches_the_active_one(db_path, capsys):
    for seed in (1, 2):
        assert main(["city", "build", "--users", "5", "--cells", "10", "--seed", str(seed), "--db", str(db_path)]) == 0
    capsys.readouterr()
    build_1 = ["city", "build", "--users", "6", "--cells", "10", "--seed", "1", "--db", str(db_path), "--json"]
    assert main(build_1) == 2  # the name is taken: nothing the user made is replaced unasked
    assert "field '--name'" in capsys.readouterr().err
    assert main(["data", "info", "--dataset", "synthetic-seed1", "--db", str(db_path), "--json"]) == 0
    assert _json(capsys)["entities"] == 5
    assert main([*build_1, "--replace"]) == 0
    assert _json(capsys)["entities"] == 6
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
        (["city", "build", "--users", "0"], "field '--users': expected a value from 1 to 100,000, got 0"),
        (["city", "build", "--cells", "many"], "argument --cells: invalid int value: 'many'"),
        (["city", "build", "--env-effect", "-1"], "field '--env-effect': expected a value from 0 to 5, got -1"),
        (["city", "build", "--center", "31.2"], "field '--center': expected LAT,LON"),
        (["city", "build", "--center", "31.2,200"], "field '--center': expected a value from -180 to 180, got 200"),
        (
            [
                "ingest",
                "tsinghua",
                "--trace",
                "/nonexistent/trace.txt",
                "--app2category",
                "/nonexistent/a.txt",
                "--categories",
                "/nonexistent/c.txt",
                "--poi",
                "/nonexistent/p.txt",
            ],
            "field '--trace': no such file: /nonexistent/trace.txt (also --app2category: no such file",
        ),
        (["ingest", "tsinghua", "--trace", "t.txt"], "the following arguments are required: --app2category"),
    ],
)
def test_bad_flags_exit_2_and_name_the_flag(argv, message, capsys, db_path):
    """Unreadable flag values stop argparse; values out of the request's bounds stop its checks (the
    flags' fields are the request's: cli/common.py). Both exit 2 and name the flag; nothing is written."""
    try:
        code = main([*argv, "--db", str(db_path)])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not db_path.exists() or (
        main(["data", "list", "--db", str(db_path), "--json"]) == 0 and _json(capsys)["datasets"] == []
    )


def test_every_subcommand_has_help_and_db_and_reporting_ones_have_json():
    parser = build_parser()
    subcommands = [
        ("city", "build"),
        ("ingest", "tsinghua"),
        ("ingest", "table"),
        ("data", "info"),
        ("data", "list"),
        ("data", "use"),
    ]
    for group, action in subcommands:
        help_text = subprocess.run(
            [sys.executable, "-m", "cli.main", group, action, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "--db" in help_text, (group, action)
        if (group, action) != ("data", "use"):
            assert "--json" in help_text, (group, action)
    assert parser.prog == "lsdm"


def test_an_unexpected_failure_is_one_line_with_its_traceback_in_an_owner_only_log(tmp_path, monkeypatch):
    """Issue 20: no traceback reaches a user on any command; one line names what failed and where the
    traceback went (`LSDM_DEBUG=1` shows it instead). The fuzz tests (tests/test_fuzz.py) fail on exit 70."""
    import argparse
    import stat

    from cli.main import EXIT_INTERNAL, unexpected

    monkeypatch.setenv("LSDM_HOME", str(tmp_path))
    try:
        {}["no such key"]
    except KeyError as error:
        line = unexpected(argparse.Namespace(command="ingest", action="table"), error)
    log = tmp_path / "logs" / "cli.log"
    assert line == (
        f"`lsdm ingest table` failed unexpectedly (KeyError: 'no such key'); the traceback is in {log}; "
        "please report it with that log"
    )
    text = log.read_text()
    assert "lsdm ingest table\nTraceback (most recent call last)" in text and "KeyError: 'no such key'" in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert EXIT_INTERNAL == 70

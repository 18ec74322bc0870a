from __future__ import annotations

import launcher


def test_first_launch_builds_the_default_city_and_the_next_reuses_it(db_path, capsys):
    assert launcher.run(["--db", str(db_path)]) == 0
    first = capsys.readouterr().out
    assert "First launch" in first and "500 users, 400 cells" in first
    assert launcher.run(["--db", str(db_path)]) == 0
    second = capsys.readouterr().out
    assert "First launch" not in second and "500 users, 400 cells" in second

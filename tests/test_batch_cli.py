"""`roadie rollup` and `roadie distribute` on the embedded default: no ROADIE_DATABASE_URL, so a SQLite database
under ROADIE_HOME that the commands migrate themselves. (PostgreSQL runs of both commands are in
test_rollup.py and test_distribution.py.)"""

from __future__ import annotations

import json
from datetime import date

import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from roadie.settings import reload_settings
from tests.batch_support import World, at


@pytest.fixture
def embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("ROADIE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROADIE_DATABASE_URL", raising=False)
    settings = reload_settings()
    yield settings
    reload_settings()


def test_commands_on_embedded_sqlite(embedded):
    from roadie.cli import app
    from roadie.db.session import engine_for, upgrade

    assert embedded.database_url.startswith("sqlite:///")
    runner = CliRunner()
    # An empty install answers without data, and migrates itself on the way.
    empty = runner.invoke(app, ["distribute", "--month", "2030-04", "--json"])
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout)["pool_cents"] == 0

    upgrade(embedded.database_url)
    with Session(engine_for(embedded.database_url)) as s:
        w = World(s)
        fan, artist = w.user("fan"), w.user("artist")
        track = w.track(artist, ("ready", 180_000))
        w.play(track, at(date(2030, 5, 31), 23, 59, 59, 999_000), user=fan, watch_ms=400_000)
        w.play(track, at(date(2030, 5, 31), 8), ip="anon", watch_ms=10_000)
        w.contribution(fan, 1234, 75, at(date(2030, 5, 2)))
        s.commit()

    rolled = runner.invoke(app, ["rollup", "--from", "2030-05-30", "--to", "2030-05-31", "--json"])
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout)["days"] == [
        {"day": "2030-05-30", "tracks": 0, "plays": 0},
        {"day": "2030-05-31", "tracks": 1, "plays": 2},
    ]
    paid = runner.invoke(app, ["distribute", "--month", "2030-05", "--json"])
    assert paid.exit_code == 0, paid.output
    body = json.loads(paid.stdout)
    assert (body["pool_cents"], body["paid_cents"], body["platform_cents"], body["listeners"]) == (925, 925, 309, 1)

    human = runner.invoke(app, ["distribute", "--month", "2030-05"])
    assert human.exit_code == 0 and "paid to artists" in human.stdout and "FAILED" not in human.stdout
    assert runner.invoke(app, ["distribute", "--month", "2030-05", "--mark-paid"]).exit_code == 0
    refused = runner.invoke(app, ["distribute", "--month", "2030-05", "--json"])
    assert refused.exit_code == 1 and "frozen" in refused.stderr

"""The daily analytics rollup on real PostgreSQL (plus a SQLite smoke run), against a plain-Python reference."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roadie.db import models as m
from roadie.errors import InvalidInput
from tasks.analytics.rollup import describe_days, resolve_days, rollup_day
from tests.batch_support import World, at, fresh_database, last_instant

D = date(2031, 5, 14)
_DAILY = sa.text(
    "SELECT track_id, plays, uniques, completions, likes, reposts, downloads FROM analytics_daily WHERE day = :day"
).bindparams(sa.bindparam("day", type_=sa.Date()))


def daily(session, day: date) -> dict[str, tuple[int, ...]]:
    return {str(r[0]).replace("-", ""): tuple(int(v) for v in r[1:]) for r in session.execute(_DAILY, {"day": day})}


def key(track: m.Track) -> str:
    return track.id.hex


def test_day_is_half_open_utc_window(pg):
    w = World(pg)
    artist = w.user("artist")
    track = w.track(artist)
    w.play(track, last_instant(D - timedelta(days=1)), ip="prev")
    w.play(track, at(D, 0, 0, 0, 0), ip="first")  # 00:00:00.000 belongs to D
    w.play(track, last_instant(D), ip="last")  # 23:59:59.999 too: the old `lt 23:59:59` lost it
    w.play(track, at(D + timedelta(days=1), 0, 0, 0, 0), ip="next")
    # 23:30 at UTC-02:00 is 01:30 UTC on the next day.
    w.play(track, datetime(2031, 5, 14, 23, 30, tzinfo=timezone(timedelta(hours=-2))), ip="tz")

    result = rollup_day(D, session=pg)

    assert daily(pg, D) == {key(track): (2, 2, 0, 0, 0, 0)}
    assert (result.tracks, result.plays, result.uniques) == (1, 2, 2)
    rollup_day(D + timedelta(days=1), session=pg)
    assert daily(pg, D + timedelta(days=1)) == {key(track): (2, 2, 0, 0, 0, 0)}


def test_uniques_count_users_else_ip_hashes(pg):
    w = World(pg)
    artist, alice, bob = w.user("artist"), w.user("alice"), w.user("bob")
    track = w.track(artist)
    w.play(track, at(D, 1), user=alice, ip="ip-a")
    w.play(track, at(D, 2), user=alice, ip="ip-b", completed=True)  # alice again, from elsewhere
    w.play(track, at(D, 3), user=bob)  # a user without an ip hash
    w.play(track, at(D, 4), ip="ip-a")  # anonymous on alice's ip: a listener of its own
    w.play(track, at(D, 5), ip="ip-a", completed=True)
    w.play(track, at(D, 6), ip="ip-z")
    w.play(track, at(D, 7))  # neither user nor ip: a play, not a listener
    w.play(track, at(D, 8), completed=True)

    rollup_day(D, session=pg)

    # plays 8; uniques alice, bob, ip-a, ip-z = 4; completions 3
    assert daily(pg, D) == {key(track): (8, 4, 3, 0, 0, 0)}


def test_engagement_counts_and_tracks_without_plays(pg):
    w = World(pg)
    artist, fan = w.user("artist"), w.user("fan")
    played, liked_only = w.track(artist), w.track(artist)
    w.play(played, at(D, 10), user=fan)
    w.engage(m.Like, fan, played, at(D, 0))
    w.engage(m.Like, artist, played, last_instant(D))
    w.engage(m.Like, fan, played, at(D + timedelta(days=1), 0))  # next day
    w.engage(m.Repost, fan, played, at(D, 9))
    w.engage(m.Download, fan, liked_only, at(D, 9))
    w.engage(m.Like, fan, liked_only, at(D, 9))

    result = rollup_day(D, session=pg)

    assert daily(pg, D) == {key(played): (1, 1, 0, 2, 1, 0), key(liked_only): (0, 0, 0, 1, 0, 1)}
    assert (result.tracks, result.plays, result.likes, result.reposts, result.downloads) == (2, 1, 3, 1, 1)


def test_rerun_after_data_changes_replaces_the_day_only(pg):
    w = World(pg)
    artist, fan = w.user("artist"), w.user("fan")
    kept, emptied = w.track(artist), w.track(artist)
    w.play(kept, at(D, 1), user=fan)
    gone = w.play(emptied, at(D, 2), user=fan)
    like = w.engage(m.Like, fan, emptied, at(D, 3))
    w.play(kept, at(D - timedelta(days=1), 1), user=fan)
    rollup_day(D - timedelta(days=1), session=pg)
    rollup_day(D, session=pg)
    before_other_day = daily(pg, D - timedelta(days=1))
    assert daily(pg, D) == {key(kept): (1, 1, 0, 0, 0, 0), key(emptied): (1, 1, 0, 1, 0, 0)}

    pg.delete(gone)
    pg.delete(like)
    w.play(kept, at(D, 4), ip="someone", completed=True)
    pg.flush()
    rollup_day(D, session=pg)
    after_change = daily(pg, D)
    rollup_day(D, session=pg)

    assert after_change == {key(kept): (2, 2, 1, 0, 0, 0)}  # emptied has no row left
    assert daily(pg, D) == after_change  # a second rerun is identical, never incremented
    assert daily(pg, D - timedelta(days=1)) == before_other_day


def reference_rollup(plays, engagements, day):
    """Plain Python: the issue's rules, one row at a time."""
    lo = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    hi = lo + timedelta(days=1)
    rows = defaultdict(
        lambda: {"plays": 0, "listeners": set(), "completions": 0, "likes": 0, "reposts": 0, "downloads": 0}
    )
    of_the_day = [(track, user, ip, completed) for track, user, ip, started, completed in plays if lo <= started < hi]
    for track, user, ip, completed in of_the_day:
        r = rows[track]
        r["plays"] += 1
        r["completions"] += int(completed)
        # A listener is the signed-in user, else the ip hash; a play with neither counts no listener.
        listener = ("user", user) if user is not None else ("ip", ip)
        if listener[1] is not None:
            r["listeners"].add(listener)
    for kind, track, created in engagements:
        if lo <= created < hi:
            rows[track][kind] += 1
    return {
        t: (r["plays"], len(r["listeners"]), r["completions"], r["likes"], r["reposts"], r["downloads"])
        for t, r in rows.items()
    }


def random_activity(rnd: random.Random, tracks: int, users: int):
    """Plays and engagement over D-1..D+1 with the edges mixed in: midnight instants, anonymous plays, users
    on shared ips, repeated listeners."""

    def offset() -> float:
        roll = rnd.random()
        if roll < 0.1:
            return rnd.choice([0, 86_400, 86_400 - 0.001, 2 * 86_400 - 0.001])
        return rnd.uniform(-3_600, 2 * 86_400 + 3_600)

    plays = [
        (
            rnd.randrange(tracks),
            rnd.choice([None, *range(users)]),
            rnd.choice([None, "ip1", "ip2", "ip3"]),
            offset(),
            rnd.random() < 0.4,
        )
        for _ in range(rnd.randint(0, 60))
    ]
    engagements = [
        (rnd.choice(["likes", "reposts", "downloads"]), rnd.randrange(tracks), offset())
        for _ in range(rnd.randint(0, 15))
    ]
    return plays, engagements


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rnd=st.randoms(use_true_random=False), tracks=st.integers(1, 4), users=st.integers(1, 4))
def test_matches_reference_and_reruns_identically(pg, rnd, tracks, users):
    plays, engagements = random_activity(rnd, tracks, users)
    nested = pg.begin_nested()
    try:
        w = World(pg)
        people = [w.user("u") for _ in range(users)]
        catalogue = [w.track(people[0]) for _ in range(tracks)]
        base = at(D, 0)
        kinds = {"likes": m.Like, "reposts": m.Repost, "downloads": m.Download}
        ref_plays, ref_engagements = [], []
        for t, u, ip, offset, completed in plays:
            started = base + timedelta(seconds=offset)
            w.play(catalogue[t], started, user=people[u] if u is not None else None, ip=ip, completed=completed)
            ref_plays.append((key(catalogue[t]), u, ip, started, completed))
        for kind, t, offset in engagements:
            created = base + timedelta(seconds=offset)
            w.engage(kinds[kind], people[0], catalogue[t], created)
            ref_engagements.append((kind, key(catalogue[t]), created))
        for day in (D, D + timedelta(days=1)):
            rollup_day(day, session=pg)
            first = daily(pg, day)
            rollup_day(day, session=pg)
            assert daily(pg, day) == first
            assert first == reference_rollup(ref_plays, ref_engagements, day)
    finally:
        nested.rollback()


def test_sqlite_smoke_gives_the_same_rows(tmp_path):
    from sqlalchemy.orm import Session

    from roadie.db.session import engine_for, upgrade

    url = f"sqlite:///{tmp_path / 'roadie.db'}"
    upgrade(url)
    with Session(engine_for(url)) as session:
        w = World(session)
        artist, fan = w.user("artist"), w.user("fan")
        track = w.track(artist)
        w.play(track, at(D, 0), user=fan, completed=True)
        w.play(track, last_instant(D), ip="x")
        w.play(track, at(D, 5))
        w.play(track, at(D + timedelta(days=1), 0), user=fan)
        w.engage(m.Like, fan, track, at(D, 3))
        session.commit()
        result = rollup_day(D, session=session)
        rollup_day(D, session=session)
        assert daily(session, D) == {key(track): (3, 2, 1, 1, 0, 0)}
        assert (result.tracks, result.plays, result.uniques) == (1, 3, 2)


def test_resolve_days():
    now = datetime(2026, 11, 28, 0, 30, tzinfo=UTC)
    assert resolve_days(now=now) == [date(2026, 11, 27)]
    assert resolve_days(day="2026-02-28") == [date(2026, 2, 28)]
    days = resolve_days(start="2026-02-27", end="2026-03-01")
    assert days == [date(2026, 2, 27), date(2026, 2, 28), date(2026, 3, 1)]
    assert describe_days(days) == "rollup-2026-02-27..2026-03-01"
    assert describe_days([date(2026, 11, 27)]) == "rollup-2026-11-27"
    for bad in (
        {"day": "2026-02-30"},
        {"day": "20260227"},
        {"day": "yesterday"},
        {"day": "9999-12-31"},
        {"start": "2026-03-02"},
        {"start": "2026-03-02", "end": "2026-03-01"},
        {"day": "2026-03-01", "start": "2026-03-01"},
    ):
        with pytest.raises(InvalidInput):
            resolve_days(**bad)


@pytest.fixture(scope="module")
def committed_url(pg_server_url):
    with fresh_database(pg_server_url) as url:
        yield url


def _seed_committed(url: str, days: list[date]) -> None:
    from sqlalchemy.orm import Session

    from roadie.db.session import engine_for

    with Session(engine_for(url)) as session:
        w = World(session)
        artist, fan = w.user("artist"), w.user("fan")
        track = w.track(artist)
        for i, day in enumerate(days):
            for n in range(i + 1):
                w.play(track, at(day, n), user=fan if n % 2 else None, ip=f"ip{n}")
        session.commit()


def test_cli_backfill_json_and_errors(committed_url, monkeypatch):
    from typer.testing import CliRunner

    from roadie.cli import app
    from roadie.settings import reload_settings

    days = [date(2032, 1, 30), date(2032, 1, 31), date(2032, 2, 1)]
    _seed_committed(committed_url, days)
    monkeypatch.setenv("ROADIE_DATABASE_URL", committed_url)
    reload_settings()
    try:
        runner = CliRunner()
        out = runner.invoke(app, ["rollup", "--from", "2032-01-30", "--to", "2032-02-01", "--json"])
        assert out.exit_code == 0, out.output
        body = json.loads(out.stdout)
        assert body["days"] == [{"day": d.isoformat(), "tracks": 1, "plays": i + 1} for i, d in enumerate(days)]
        assert body["seconds"] >= 0
        again = json.loads(runner.invoke(app, ["rollup", "--day", "2032-02-01", "--json"]).stdout)
        assert again["days"] == body["days"][-1:]
        for args in (
            ["--day", "2032-02-30"],
            ["--from", "2032-02-02", "--to", "2032-02-01"],
            ["--from", "2032-01-01"],
            ["--day", "2032-2-1"],
        ):
            bad = runner.invoke(app, ["rollup", *args])
            assert bad.exit_code == 2, (args, bad.output)
            assert "error:" in bad.stderr
    finally:
        reload_settings()


def test_flow_backfills_with_run_name_and_artifact(committed_url, prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client

    from flows.rollup import analytics_rollup
    from roadie.settings import reload_settings

    days = [date(2032, 3, 1), date(2032, 3, 2), date(2032, 3, 3)]
    _seed_committed(committed_url, days)
    monkeypatch.setenv("ROADIE_DATABASE_URL", committed_url)
    reload_settings()
    try:
        state = analytics_rollup(start="2032-03-01", end="2032-03-03", return_state=True)
        rows = state.result()
        assert [(r["day"], r["tracks"], r["plays"]) for r in rows] == [
            (d.isoformat(), 1, i + 1) for i, d in enumerate(days)
        ]
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(state.state_details.flow_run_id)
            assert run.name == "rollup-2032-03-01..2032-03-03"
            tasks = client.read_task_runs()
            names = {t.name for t in tasks if t.flow_run_id == run.id}
            assert names == {f"rollup-{d}" for d in days}
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
        assert [a.type for a in artifacts] == ["table"]
        table = artifacts[0].data if isinstance(artifacts[0].data, list) else json.loads(artifacts[0].data)
        assert [row["plays"] for row in table] == [1, 2, 3]

        default = analytics_rollup(return_state=True)  # no parameters: yesterday, UTC
        with get_client(sync_client=True) as client:
            name = client.read_flow_run(default.state_details.flow_run_id).name
        assert name == f"rollup-{resolve_days()[0]}" and default.result()[0]["day"] == str(resolve_days()[0])
    finally:
        reload_settings()

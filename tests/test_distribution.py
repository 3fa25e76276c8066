"""The monthly user-centric distribution on real PostgreSQL (plus a SQLite smoke run), against a plain-Python
reference of the issue's rules; money compared exactly, in cents."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from roadie.errors import InvalidInput
from tasks.payouts.distribution import LOCK_NAMESPACE, PeriodPaid, distribute_month, mark_paid
from tasks.payouts.invariants import InvalidContributions, InvariantViolation
from tasks.payouts.period import Period, last_month, parse_month
from tasks.payouts.report import top_artists
from tests.batch_support import World, at, fresh_database, last_instant, month_days, period_rows

M = Period.of("2031-03")
IN = at(date(2031, 3, 10))  # a moment inside the month


def payouts(session: Session, period: Period = M) -> dict[uuid.UUID, tuple[int, int, int]]:
    """artist -> (total_cents, listener_count, contribution_count)"""
    q = sa.text(
        "SELECT artist_id, total_cents, listener_count, contribution_count FROM artist_payouts WHERE period_start = :ps"
    ).bindparams(sa.bindparam("ps", type_=sa.Date()))
    return {uuid.UUID(str(r[0])): (int(r[1]), int(r[2]), int(r[3])) for r in session.execute(q, {"ps": period.start})}


def unallocated(session: Session, period: Period = M) -> dict[uuid.UUID, int]:
    q = sa.text("SELECT user_id, cents FROM payout_unallocated_lines WHERE period_start = :ps").bindparams(
        sa.bindparam("ps", type_=sa.Date())
    )
    return {uuid.UUID(str(r[0])): int(r[1]) for r in session.execute(q, {"ps": period.start})}


def allocation(session: Session, period: Period = M) -> dict[tuple[uuid.UUID, uuid.UUID], tuple[int, int]]:
    """(user, artist) -> (weight_ms, cents)"""
    q = sa.text(
        "SELECT user_id, artist_id, weight_ms, cents FROM payout_allocation_lines WHERE period_start = :ps"
    ).bindparams(sa.bindparam("ps", type_=sa.Date()))
    return {
        (uuid.UUID(str(r[0])), uuid.UUID(str(r[1]))): (int(r[2]), int(r[3]))
        for r in session.execute(q, {"ps": period.start})
    }


def charity_totals(session: Session, period: Period = M) -> dict[uuid.UUID, tuple[int, int]]:
    q = sa.text(
        "SELECT charity_id, cents, contribution_count FROM payout_charity_totals WHERE period_start = :ps"
    ).bindparams(sa.bindparam("ps", type_=sa.Date()))
    return {uuid.UUID(str(r[0])): (int(r[1]), int(r[2])) for r in session.execute(q, {"ps": period.start})}


# --- the rules, case by case ----------------------------------------------------------------------------------


def test_period_boundaries_for_contributions_and_plays(pg):
    w = World(pg)
    fan, early, late, outside = w.user("fan"), w.user("early"), w.user("late"), w.user("outside")
    t_early, t_late, t_outside = w.track(early), w.track(late), w.track(outside)
    w.contribution(fan, 1000, 100, at(M.start, 0, 0, 0, 0))  # first instant: in
    w.contribution(fan, 500, 100, last_instant(M.end))  # last millisecond: in
    w.contribution(fan, 7000, 100, at(M.end + timedelta(days=1), 0))  # next month's first instant: out
    w.contribution(fan, 9000, 100, last_instant(M.start - timedelta(days=1)))  # previous month: out
    w.play(t_early, at(M.start, 0, 0, 0, 0), user=fan, watch_ms=30_000)
    w.play(t_late, last_instant(M.end), user=fan, watch_ms=60_000)
    w.play(t_outside, at(M.end + timedelta(days=1), 0), user=fan, watch_ms=600_000)

    result = distribute_month(M, session=pg)

    # pool 1500 split 30 s : 60 s -> 500 : 1000
    assert payouts(pg) == {early.id: (500, 1, 2), late.id: (1000, 1, 2)}
    assert (result.pool_cents, result.paid_cents, result.amount_cents, result.contributions) == (1500, 1500, 1500, 2)
    assert outside.id not in payouts(pg)


def test_anonymous_self_short_and_capped_plays(pg):
    w = World(pg)
    fan, artist, other = w.user("fan"), w.user("artist"), w.user("other")
    # Longest *ready* version caps listening: 200 s (the failed 900 s one and the unknown one do not count).
    capped = w.track(artist, ("ready", 180_000), ("ready", 200_000), ("failed", 900_000), ("ready", None))
    uncapped = w.track(other, ("processing", 100_000))  # no ready version: no cap
    own = w.track(fan)
    w.contribution(fan, 10_000, 50, IN)  # pool 5000
    w.play(capped, IN, user=fan, watch_ms=500_000)  # counts 200 000
    w.play(capped, IN, user=fan, watch_ms=29_999)  # under 30 s: ignored
    w.play(capped, IN, user=None, ip="anon", watch_ms=600_000)  # anonymous: nobody's pool
    w.play(uncapped, IN, user=fan, watch_ms=10_000, completed=True)  # short but completed: counts 10 000
    w.play(uncapped, IN, user=fan, watch_ms=290_000)  # no cap: 290 000
    w.play(own, IN, user=fan, watch_ms=3_600_000)  # self-listening never counts

    distribute_month(M, session=pg)

    assert allocation(pg) == {(fan.id, artist.id): (200_000, 2000), (fan.id, other.id): (300_000, 3000)}
    assert fan.id not in payouts(pg)


def test_user_with_contributions_and_no_plays_is_unallocated_not_dropped(pg):
    w = World(pg)
    payer, idle, artist = w.user("payer"), w.user("idle"), w.user("artist")
    track = w.track(artist)
    w.contribution(payer, 1000, 80, IN)
    w.contribution(idle, 999, 70, IN)  # pool 699 (699.3 floored per contribution)
    w.contribution(idle, 1, 100, IN)  # +1
    w.play(track, IN, user=payer)
    w.play(track, IN, user=idle, watch_ms=20_000)  # too short to qualify

    result = distribute_month(M, session=pg)

    assert unallocated(pg) == {idle.id: 700}
    assert payouts(pg) == {artist.id: (800, 1, 1)}
    assert (result.pool_cents, result.paid_cents, result.unallocated_cents, result.unallocated_users) == (
        1500,
        800,
        700,
        1,
    )
    assert result.as_json()["unallocated_cents"] == 700
    assert all(c.ok for c in result.checks)


def test_one_cent_pool_over_three_artists(pg):
    w = World(pg)
    fan, tie_fan = w.user("fan"), w.user("tie-fan")
    artists = sorted((w.user("artist") for _ in range(3)), key=lambda u: u.id)
    tracks = [w.track(a) for a in artists]
    w.contribution(fan, 1, 100, IN)
    w.contribution(tie_fan, 2, 50, IN)
    # fan: weights 30 : 31 : 32 s -> remainders 30 000, 31 000, 32 000 of 93 000: the cent goes to the heaviest.
    for track, seconds in zip(tracks, (30, 31, 32), strict=False):
        w.play(track, IN, user=fan, watch_ms=seconds * 1000)
    # tie_fan: equal weights -> equal remainders -> the lowest artist_id wins.
    for track in reversed(tracks):
        w.play(track, IN, user=tie_fan, watch_ms=45_000)

    distribute_month(M, session=pg)

    lines = allocation(pg)
    assert [lines[(fan.id, a.id)][1] for a in artists] == [0, 0, 1]
    assert [lines[(tie_fan.id, a.id)][1] for a in artists] == [1, 0, 0]
    # Zero-cent lines stay in the audit trail, but only users who gave cents are listeners.
    assert payouts(pg) == {artists[0].id: (1, 1, 1), artists[2].id: (1, 1, 1)}


def test_equal_weight_ties_go_by_artist_id(pg):
    w = World(pg)
    fan = w.user("fan")
    artists = sorted((w.user("artist") for _ in range(3)), key=lambda u: u.id)
    for a in reversed(artists):
        w.play(w.track(a), IN, user=fan, watch_ms=120_000)
    w.contribution(fan, 100, 100, IN)

    distribute_month(M, session=pg)

    assert [payouts(pg)[a.id][0] for a in artists] == [34, 33, 33]


def test_refunded_failed_and_pending_contributions_do_not_count(pg):
    w = World(pg)
    fan, artist = w.user("fan"), w.user("artist")
    w.play(w.track(artist), IN, user=fan)
    w.contribution(fan, 1000, 100, IN)
    for status in ("refunded", "failed", "pending"):
        w.contribution(fan, 50_000, 100, IN, status=status)

    result = distribute_month(M, session=pg)

    assert payouts(pg) == {artist.id: (1000, 1, 1)}
    assert (result.amount_cents, result.contributions) == (1000, 1)


def test_charity_and_platform_shares(pg):
    w = World(pg)
    fan, fan2, artist = w.user("fan"), w.user("fan2"), w.user("artist")
    red, green = w.charity("red"), w.charity("green")
    w.play(w.track(artist), IN, user=fan)
    w.contribution(fan, 999, 70, IN, charity_percent=15, charity=red)  # 699 / 149 / 151
    w.contribution(fan2, 1001, 60, IN, charity_percent=40, charity=red)  # 600 / 400 / 1
    w.contribution(fan2, 333, 50, IN, charity_percent=25, charity=green)  # 166 / 83 / 84
    w.contribution(fan2, 100, 90, IN, charity_percent=0, charity=green)  # 90 / 0 / 10: 0 % is no charity line

    result = distribute_month(M, session=pg)

    assert charity_totals(pg) == {red.id: (549, 2), green.id: (83, 1)}
    assert result.charity_cents == 632
    assert result.platform_cents == 151 + 1 + 84 + 10
    assert result.pool_cents == 699 + 600 + 166 + 90
    assert result.pool_cents + result.charity_cents + result.platform_cents == result.amount_cents == 2433
    assert unallocated(pg) == {fan2.id: 856}


def test_percentages_over_100_are_reported_and_nothing_is_written(pg):
    w = World(pg)
    fan, artist = w.user("fan"), w.user("artist")
    charity = w.charity()
    w.play(w.track(artist), IN, user=fan)
    w.contribution(fan, 1000, 100, IN)
    first = distribute_month(M, session=pg)
    before = period_rows(pg, M.start)
    bad = w.contribution(fan, 1000, 80, IN, charity_percent=30, charity=charity)
    nowhere = w.contribution(fan, 1000, 80, IN, charity_percent=10)  # a charity share with no charity

    with pytest.raises(InvalidContributions) as caught:
        distribute_month(M, session=pg)

    message = str(caught.value)
    assert message.startswith("2 succeeded contribution(s) in 2031-03 are invalid")
    assert str(bad.id) in message and "80% + charity 30% = 110% > 100%" in message
    assert str(nowhere.id) in message and "charity 10% but no charity_id" in message
    assert period_rows(pg, M.start) == before  # the earlier results stand untouched
    assert first.paid_cents == 1000


def test_rerun_after_data_changes_replaces_exactly(pg):
    w = World(pg)
    fan, a, b, c = w.user("fan"), w.user("a"), w.user("b"), w.user("c")
    ta, tb, tc = w.track(a), w.track(b), w.track(c)
    w.contribution(fan, 900, 100, IN)
    w.play(ta, IN, user=fan, watch_ms=60_000)
    gone = w.play(tb, IN, user=fan, watch_ms=60_000)
    distribute_month(M, session=pg)
    ids_before = {r[1]: r[0] for r in pg.execute(sa.text("SELECT id, artist_id FROM artist_payouts"))}
    assert payouts(pg) == {a.id: (450, 1, 1), b.id: (450, 1, 1)}
    same = period_rows(pg, M.start)
    distribute_month(M, session=pg)
    assert period_rows(pg, M.start) == same  # identical rerun: never incremented

    pg.delete(gone)
    w.play(tc, IN, user=fan, watch_ms=120_000)
    w.contribution(fan, 300, 100, IN)
    pg.flush()
    result = distribute_month(M, session=pg)

    assert payouts(pg) == {a.id: (400, 1, 2), c.id: (800, 1, 2)}  # b left; pool 1200 split 1 : 2
    ids_after = {r[1]: r[0] for r in pg.execute(sa.text("SELECT id, artist_id FROM artist_payouts"))}
    assert ids_after[a.id] == ids_before[a.id]  # a row keeps its id across reruns
    assert (result.paid_cents, result.artists, result.listeners) == (1200, 2, 1)


def test_paid_period_refuses_recomputation(pg):
    w = World(pg)
    fan, artist = w.user("fan"), w.user("artist")
    w.play(w.track(artist), IN, user=fan)
    w.contribution(fan, 1000, 100, IN)
    with pytest.raises(InvalidInput, match="has not been computed"):
        mark_paid(M, session=pg)
    distribute_month(M, session=pg)
    paid = mark_paid(M, session=pg)
    frozen = period_rows(pg, M.start)
    w.contribution(fan, 5000, 100, IN)

    with pytest.raises(PeriodPaid, match="2031-03 was marked paid"):
        distribute_month(M, session=pg)

    assert paid.status == "paid" and paid.paid_cents == 1000
    assert mark_paid(M, session=pg).status == "paid"  # marking twice is harmless
    assert period_rows(pg, M.start) == frozen


def test_a_broken_invariant_aborts_the_transaction(pg):
    """A trigger that skims a cent off every payout row: the run must notice and commit nothing."""
    w = World(pg)
    fan, artist = w.user("fan"), w.user("artist")
    w.play(w.track(artist), IN, user=fan)
    w.contribution(fan, 1000, 100, IN)
    pg.execute(
        sa.text("""
        CREATE FUNCTION skim() RETURNS trigger AS $$
        BEGIN NEW.total_cents := NEW.total_cents - 1; RETURN NEW; END $$ LANGUAGE plpgsql;
        CREATE TRIGGER skim BEFORE INSERT OR UPDATE ON artist_payouts FOR EACH ROW EXECUTE FUNCTION skim();
    """)
    )

    with pytest.raises(InvariantViolation, match=r"Σ payouts \+ Σ unallocated = Σ pools: 999 != 1000"):
        distribute_month(M, session=pg)

    assert period_rows(pg, M.start) == {
        "artist_payouts": [],
        "allocation": [],
        "unallocated": [],
        "charity": [],
        "run": [],
    }


def test_months_and_top_artists(pg):
    assert parse_month("2026-10") == date(2026, 10, 1)
    for bad in ("2026-13", "2026-1", "202610", "october", "2026-10-01", "9999-12", "0000-01"):
        with pytest.raises(InvalidInput):
            parse_month(bad)
    assert last_month(datetime(2026, 1, 1, 0, 0, tzinfo=UTC)).label == "2025-12"
    assert last_month(datetime(2026, 3, 31, 23, 59, tzinfo=UTC)).label == "2026-02"
    assert Period.of("2028-02").end == date(2028, 2, 29)
    w = World(pg)
    fan, big, small = w.user("fan"), w.user("big"), w.user("small")
    w.play(w.track(big), IN, user=fan, watch_ms=90_000)
    w.play(w.track(small), IN, user=fan, watch_ms=30_000)
    w.contribution(fan, 400, 100, IN)
    distribute_month(M, session=pg)
    top = top_artists(M, session=pg)
    assert [(t.username, t.total_cents) for t in top] == [(big.username, 300), (small.username, 100)]


# --- the rules as a reference, and random months --------------------------------------------------------------


@dataclass(frozen=True)
class Contrib:
    user: int
    amount: int
    artist_percent: int
    charity_percent: int
    charity: int | None
    status: str
    offset_s: int


@dataclass(frozen=True)
class Play:
    user: int | None
    track: int
    offset_s: int
    watch_ms: int
    completed: bool


def reference(period: Period, user_ids, owners, caps, charity_ids, contribs, plays):
    """The issue's rules in plain Python, one row at a time. Returns what the SQL must have written."""
    lo, hi = period.window
    start = lo
    ok = [c for c in contribs if c.status == "succeeded" and lo <= start + timedelta(seconds=c.offset_s) < hi]
    pools, counts = defaultdict(int), Counter()
    charities = defaultdict(lambda: [0, 0])
    platform = 0
    for c in ok:
        artist_share = c.amount * c.artist_percent // 100
        charity_share = c.amount * c.charity_percent // 100
        pools[user_ids[c.user]] += artist_share
        counts[user_ids[c.user]] += 1
        platform += c.amount - artist_share - charity_share
        if c.charity is not None and c.charity_percent > 0:
            charities[charity_ids[c.charity]][0] += charity_share
            charities[charity_ids[c.charity]][1] += 1
    pools = {u: p for u, p in pools.items() if p > 0}
    weights = defaultdict(lambda: defaultdict(int))
    for p in plays:
        if p.user is None or user_ids[p.user] not in pools:
            continue
        user, artist = user_ids[p.user], owners[p.track]
        if not lo <= start + timedelta(seconds=p.offset_s) < hi or user == artist:
            continue
        if not (p.watch_ms >= 30_000 or p.completed):
            continue
        cap = caps[p.track]
        weights[user][artist] += p.watch_ms if cap is None or cap >= p.watch_ms else cap
    lines, left = {}, {}
    for user, pool in pools.items():
        ws = {a: wt for a, wt in weights[user].items() if wt > 0}
        total = sum(ws.values())
        if total == 0:
            left[user] = pool
            continue
        base = {a: pool * wt // total for a, wt in ws.items()}
        order = sorted(ws, key=lambda a: (-(pool * ws[a] % total), a))
        for a in order[: pool - sum(base.values())]:
            base[a] += 1
        for a, wt in ws.items():
            lines[(user, a)] = (wt, base[a])
    paid = defaultdict(lambda: [0, 0, 0])
    for (user, artist), (_, cents) in lines.items():
        if cents > 0:
            paid[artist][0] += cents
            paid[artist][1] += 1
            paid[artist][2] += counts[user]
    return {
        "allocation": lines,
        "unallocated": left,
        "payouts": {a: tuple(v) for a, v in paid.items()},
        "charity": {c: tuple(v) for c, v in charities.items()},
        "platform": platform,
    }


def random_month(rnd: random.Random, users: int, tracks: int, days: int) -> tuple[list[Contrib], list[Play]]:
    """Valid activity around a month (invalid data aborts, tested above): mostly in the month, paying and
    qualified, with every edge mixed in: zero and one-cent amounts, 0 and 100 %, boundary instants, other
    months, refunds, anonymous and self plays, 29.999 s, completed short plays."""

    def offset() -> int:
        roll = rnd.random()
        if roll < 0.05:
            return 0  # the month's first instant
        if roll < 0.10:
            return days * 86_400 - rnd.choice([1, 0])  # the last second in, the next month's first instant out
        if roll < 0.20:
            return rnd.choice([rnd.randint(-3 * 86_400, -1), days * 86_400 + rnd.randint(0, 3 * 86_400)])
        return rnd.randint(0, days * 86_400 - 1)

    contribs = []
    for _ in range(rnd.randint(0, 3 * users)):
        artist_percent = rnd.choice([0, 100, rnd.randint(1, 100), rnd.randint(50, 90)])
        charity = rnd.choice([None, 0, 1])
        charity_percent = 0 if charity is None else rnd.randint(0, 100 - artist_percent)
        amount = rnd.choice([0, 1, 2, 3, rnd.randint(1, 99), rnd.randint(100, 100_000)])
        status = rnd.choice(["succeeded"] * 5 + ["refunded", "failed", "pending"])
        contribs.append(
            Contrib(rnd.randrange(users), amount, artist_percent, charity_percent, charity, status, offset())
        )
    plays = []
    for _ in range(rnd.randint(0, 12 * users)):
        user = None if rnd.random() < 0.1 else rnd.randrange(users)
        watch_ms = rnd.choice(
            [0, 29_999, 30_000, rnd.randint(0, 29_999), rnd.randint(30_000, 900_000), rnd.randint(30_000, 900_000)]
        )
        plays.append(Play(user, rnd.randrange(tracks), offset(), watch_ms, rnd.random() < 0.3))
    return contribs, plays


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    month=st.dates(date(2020, 1, 1), date(2035, 12, 1)),
    rnd=st.randoms(use_true_random=False),
    users=st.integers(2, 6),
    tracks=st.integers(1, 8),
)
def test_random_months_hold_invariants_match_reference_and_rerun_identically(pg, month, rnd, users, tracks):
    period = Period.of(month)
    contribs, plays = random_month(rnd, users, tracks, month_days(period.start))
    owners = [rnd.randrange(users) for _ in range(tracks)]
    caps = [rnd.choice([None, 60_000, 200_000]) for _ in range(tracks)]
    nested = pg.begin_nested()
    try:
        w = World(pg)
        people = [w.user("u") for _ in range(users)]
        charities = [w.charity() for _ in range(2)]
        catalogue = [
            w.track(people[o], *((("ready", cap),) if cap else ())) for o, cap in zip(owners, caps, strict=False)
        ]
        lo = period.window[0]
        for c in contribs:
            w.contribution(
                people[c.user],
                c.amount,
                c.artist_percent,
                lo + timedelta(seconds=c.offset_s),
                c.charity_percent,
                charities[c.charity] if c.charity is not None else None,
                c.status,
            )
        for p in plays:
            w.play(
                catalogue[p.track],
                lo + timedelta(seconds=p.offset_s),
                user=people[p.user] if p.user is not None else None,
                watch_ms=p.watch_ms,
                completed=p.completed,
            )

        result = distribute_month(period, session=pg)
        first = period_rows(pg, period.start)
        again = distribute_month(period, session=pg)

        assert period_rows(pg, period.start) == first
        assert all(c.ok for c in result.checks) and all(c.ok for c in again.checks)
        assert result.paid_cents + result.unallocated_cents == result.pool_cents
        assert result.pool_cents + result.charity_cents + result.platform_cents == result.amount_cents
        expected = reference(
            period,
            [u.id for u in people],
            [people[o].id for o in owners],
            caps,
            [c.id for c in charities],
            contribs,
            plays,
        )
        assert allocation(pg, period) == expected["allocation"]
        assert unallocated(pg, period) == expected["unallocated"]
        assert payouts(pg, period) == {a: (v[0], v[1], v[2]) for a, v in expected["payouts"].items()}
        assert charity_totals(pg, period) == expected["charity"]
        assert result.platform_cents == expected["platform"]
    finally:
        nested.rollback()


# --- SQLite, locks, CLI and the flow ----------------------------------------------------------------------------


def _scenario(session: Session) -> dict[str, str]:
    """A small month with every kind of line; returns username -> role."""
    w = World(session)
    fan, idle, a, b = w.user("fan"), w.user("idle"), w.user("a"), w.user("b")
    charity = w.charity()
    w.play(w.track(a, ("ready", 100_000)), IN, user=fan, watch_ms=400_000)
    w.play(w.track(b), IN, user=fan, watch_ms=50_000, completed=True)
    w.contribution(fan, 1001, 70, IN, charity_percent=20, charity=charity)
    w.contribution(idle, 250, 100, IN)
    w.contribution(idle, 250, 100, IN, status="refunded")
    return {fan.username: "fan", idle.username: "idle", a.username: "a", b.username: "b"}


def _named_payouts(session: Session, names: dict[str, str]) -> dict[str, tuple]:
    rows = session.execute(
        sa.text(
            "SELECT u.username, p.total_cents, p.listener_count, p.contribution_count FROM artist_payouts p "
            "JOIN users u ON u.id = p.artist_id"
        )
    ).all()
    return {names[r[0]]: tuple(int(v) for v in r[1:]) for r in rows if r[0] in names}


def test_sqlite_smoke_matches_postgres(pg, tmp_path):
    from roadie.db.session import engine_for, upgrade

    names_pg = _scenario(pg)
    on_pg = distribute_month(M, session=pg)
    url = f"sqlite:///{tmp_path / 'roadie.db'}"
    upgrade(url)
    with Session(engine_for(url)) as lite:
        names_lite = _scenario(lite)
        lite.commit()
        on_lite = distribute_month(M, session=lite)
        first = period_rows(lite, M.start)
        distribute_month(M, session=lite)
        assert period_rows(lite, M.start) == first
        assert _named_payouts(lite, names_lite) == _named_payouts(pg, names_pg) == {"a": (467, 1, 1), "b": (233, 1, 1)}
        assert [t.total_cents for t in top_artists(M, session=lite)] == [467, 233]
    strip = {"seconds": 0}
    assert {**on_lite.as_json(), **strip} == {**on_pg.as_json(), **strip}
    assert on_lite.unallocated_cents == 250 and on_lite.charity_cents == 200


@pytest.fixture(scope="module")
def committed_url(pg_server_url):
    with fresh_database(pg_server_url) as url:
        yield url


def test_concurrent_runs_of_a_period_are_serialised(committed_url):
    from roadie.db.session import engine_for

    period = Period.of("2033-07")
    engine = engine_for(committed_url)
    with Session(engine) as s:
        w = World(s)
        fan, artist = w.user("fan"), w.user("artist")
        w.play(w.track(artist), at(date(2033, 7, 4)), user=fan)
        w.contribution(fan, 1234, 100, at(date(2033, 7, 4)))
        s.commit()
    results, errors = [], []

    def run() -> None:
        try:
            with Session(engine) as s:
                results.append(distribute_month(period, session=s))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:ns, :key)"), {"ns": LOCK_NAMESPACE, "key": period.lock_id})
        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert all(t.is_alive() for t in threads), "a run went ahead while the period was locked"
        holder.execute(sa.text("SELECT pg_advisory_unlock(:ns, :key)"), {"ns": LOCK_NAMESPACE, "key": period.lock_id})
        holder.commit()
    for t in threads:
        t.join(60)
    assert not errors
    assert [r.paid_cents for r in results] == [1234, 1234, 1234]
    with Session(engine) as s:
        assert [v[0] for v in payouts(s, period).values()] == [1234]


def test_cli_distribute_json_mark_paid_and_refusal(committed_url, monkeypatch):
    from typer.testing import CliRunner

    from roadie.cli import app
    from roadie.db.session import engine_for
    from roadie.settings import reload_settings

    with Session(engine_for(committed_url)) as s:
        w = World(s)
        fan, artist, idle = w.user("fan"), w.user("artist"), w.user("idle")
        w.play(w.track(artist), at(date(2033, 9, 2)), user=fan)
        w.contribution(fan, 1000, 70, at(date(2033, 9, 2)), charity_percent=10, charity=w.charity())
        w.contribution(idle, 100, 50, at(date(2033, 9, 3)))
        s.commit()
    monkeypatch.setenv("ROADIE_DATABASE_URL", committed_url)
    reload_settings()
    try:
        runner = CliRunner()
        out = runner.invoke(app, ["distribute", "--month", "2033-09", "--json"])
        assert out.exit_code == 0, out.output
        body = json.loads(out.stdout)
        assert set(body) == {
            "period",
            "pool_cents",
            "paid_cents",
            "unallocated_cents",
            "charity_cents",
            "platform_cents",
            "artists",
            "listeners",
            "seconds",
        }
        assert {k: v for k, v in body.items() if k != "seconds"} == {
            "period": "2033-09",
            "pool_cents": 750,
            "paid_cents": 700,
            "unallocated_cents": 50,
            "charity_cents": 100,
            "platform_cents": 250,
            "artists": 1,
            "listeners": 1,
        }
        paid = runner.invoke(app, ["distribute", "--month", "2033-09", "--mark-paid", "--json"])
        assert paid.exit_code == 0 and json.loads(paid.stdout)["status"] == "paid"
        refused = runner.invoke(app, ["distribute", "--month", "2033-09"])
        assert refused.exit_code == 1 and "marked paid" in refused.stderr
        for bad in ("2033-13", "2033/09", "09-2033"):
            out = runner.invoke(app, ["distribute", "--month", bad])
            assert out.exit_code == 2 and "error:" in out.stderr
    finally:
        reload_settings()


def test_flow_writes_run_name_and_markdown_report(committed_url, prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.distribution import distribution
    from roadie.db.session import engine_for
    from roadie.settings import reload_settings

    with Session(engine_for(committed_url)) as s:
        w = World(s)
        fan, artist = w.user("fan"), w.user("star")
        w.play(w.track(artist), at(date(2034, 2, 2)), user=fan)
        w.contribution(fan, 2500, 80, at(date(2034, 2, 3)))
        star = artist.username
        s.commit()
    monkeypatch.setenv("ROADIE_DATABASE_URL", committed_url)
    reload_settings()
    try:
        state = distribution(month="2034-02", return_state=True)
        assert state.result()["paid_cents"] == 2000
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(state.state_details.flow_run_id)
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
        assert run.name == "distribution-2034-02"
        assert [a.type for a in artifacts] == ["markdown"]
        text = artifacts[0].data
        assert "# Distribution 2034-02" in text and star in text and "20.00" in text
        assert "FAILED" not in text
        assert "| Σ payouts + Σ unallocated = Σ pools | 2000 | 2000 | ok |" in text
        assert "| Σ artist shares + Σ charity shares + Σ platform = Σ amount_cents | 2500 | 2500 | ok |" in text
    finally:
        reload_settings()

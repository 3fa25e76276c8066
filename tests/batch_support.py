"""Shared by the batch-job tests (rollup, distribution, their CLI): a builder of catalogue and activity rows, and
throwaway databases for tests that must commit (locks, flows, the CLI)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from roadie.db import models as m

UTC = UTC


def at(day: date, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second, micro), tzinfo=UTC)


def last_instant(day: date) -> datetime:
    """day 23:59:59.999 UTC, the last millisecond a player reports."""
    return at(day, 23, 59, 59, 999_000)


class World:
    """Adds rows through the ORM on the given session, flushed at once so raw SQL sees them."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def _add(self, obj):
        self.s.add(obj)
        self.s.flush()
        return obj

    def user(self, name: str = "user") -> m.User:
        return self._add(m.User(username=f"{name}-{uuid.uuid4().hex[:10]}"))

    def track(self, owner: m.User, *versions: tuple[str, int | None]) -> m.Track:
        """versions: (status, duration_ms) pairs."""
        track = self._add(m.Track(owner_user_id=owner.id, title="t"))
        for status, duration_ms in versions:
            asset = self._add(m.Asset(bucket="b", key=f"k/{uuid.uuid4().hex}", size_bytes=1))
            self._add(
                m.TrackVersion(track_id=track.id, original_asset_id=asset.id, status=status, duration_ms=duration_ms)
            )
        return track

    def play(
        self,
        track: m.Track,
        started_at: datetime,
        user: m.User | None = None,
        ip: str | None = None,
        watch_ms: int = 60_000,
        completed: bool = False,
    ) -> m.AnalyticsPlay:
        return self._add(
            m.AnalyticsPlay(
                track_id=track.id,
                user_id=user.id if user else None,
                ip_hash=ip,
                started_at=started_at,
                watch_ms=watch_ms,
                completed=completed,
            )
        )

    def engage(self, kind: type, user: m.User, track: m.Track, created_at: datetime):
        return self._add(kind(user_id=user.id, track_id=track.id, created_at=created_at))

    def charity(self, name: str = "charity") -> m.Charity:
        return self._add(m.Charity(name=name))

    def contribution(
        self,
        user: m.User,
        amount_cents: int,
        artist_percent: int,
        created_at: datetime,
        charity_percent: int = 0,
        charity: m.Charity | None = None,
        status: str = "succeeded",
    ) -> m.Contribution:
        return self._add(
            m.Contribution(
                user_id=user.id,
                amount_cents=amount_cents,
                artist_percent=artist_percent,
                charity_percent=charity_percent,
                charity_id=charity.id if charity else None,
                status=status,
                created_at=created_at,
            )
        )


def period_rows(session: Session, period_start: date) -> dict[str, list[tuple]]:
    """Everything a distribution run writes for a period, sorted: reruns must reproduce it exactly."""
    queries = {
        "artist_payouts": "SELECT id, artist_id, period_start, period_end, total_cents, contribution_count, "
        "listener_count FROM artist_payouts WHERE period_start = :ps",
        "allocation": "SELECT user_id, artist_id, weight_ms, cents "
        "FROM payout_allocation_lines WHERE period_start = :ps",
        "unallocated": "SELECT user_id, cents, reason FROM payout_unallocated_lines WHERE period_start = :ps",
        "charity": "SELECT charity_id, cents, contribution_count FROM payout_charity_totals WHERE period_start = :ps",
        "run": "SELECT period_end, status, contributions, amount_cents, pool_cents, paid_cents, unallocated_cents, "
        "charity_cents, platform_cents, artists, listeners, unallocated_users FROM payout_runs "
        "WHERE period_start = :ps",
    }
    stmt = {k: sa.text(q).bindparams(sa.bindparam("ps", type_=sa.Date())) for k, q in queries.items()}
    return {
        k: sorted(tuple(str(v) for v in row) for row in session.execute(q, {"ps": period_start}))
        for k, q in stmt.items()
    }


def fresh_database(server_url: str):
    """A new, migrated PostgreSQL database on the test server, dropped afterwards (for tests that commit)."""
    from tests.services import scratch_database

    return scratch_database(server_url, "roadie_batch", migrate=True)


def month_days(first: date) -> int:
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (nxt - first).days

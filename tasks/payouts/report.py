"""What a distribution run reports: its totals and checks, and the period's top artists."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from tasks.batch_sql import DAY, sql, transaction
from tasks.payouts.invariants import InvariantCheck
from tasks.payouts.period import Period


@dataclass(frozen=True)
class DistributionResult:
    period: str
    period_start: date
    period_end: date
    status: str
    contributions: int
    amount_cents: int
    pool_cents: int
    paid_cents: int
    unallocated_cents: int
    charity_cents: int
    platform_cents: int
    artists: int
    listeners: int
    unallocated_users: int
    checks: tuple[InvariantCheck, ...]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        """The shape `roadie distribute --json` prints."""
        return {
            "period": self.period,
            "pool_cents": self.pool_cents,
            "paid_cents": self.paid_cents,
            "unallocated_cents": self.unallocated_cents,
            "charity_cents": self.charity_cents,
            "platform_cents": self.platform_cents,
            "artists": self.artists,
            "listeners": self.listeners,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class ArtistTotal:
    artist_id: str
    username: str
    total_cents: int
    listener_count: int
    contribution_count: int


LOAD_RUN = sql("SELECT * FROM payout_runs WHERE period_start = :ps", ps=DAY)

_TOP_ARTISTS = sql(
    """
    SELECT p.artist_id, u.username, p.total_cents, p.listener_count, p.contribution_count
    FROM artist_payouts p JOIN users u ON u.id = p.artist_id
    WHERE p.period_start = :ps
    ORDER BY p.total_cents DESC, p.artist_id
    LIMIT :limit
    """,
    ps=DAY,
)


def result(period: Period, run: Any, checks: tuple[InvariantCheck, ...], seconds: float) -> DistributionResult:
    return DistributionResult(
        period=period.label,
        period_start=period.start,
        period_end=period.end,
        status=run["status"],
        contributions=int(run["contributions"]),
        amount_cents=int(run["amount_cents"]),
        pool_cents=int(run["pool_cents"]),
        paid_cents=int(run["paid_cents"]),
        unallocated_cents=int(run["unallocated_cents"]),
        charity_cents=int(run["charity_cents"]),
        platform_cents=int(run["platform_cents"]),
        artists=int(run["artists"]),
        listeners=int(run["listeners"]),
        unallocated_users=int(run["unallocated_users"]),
        checks=checks,
        seconds=round(seconds, 3),
    )


def top_artists(month: Period | date | str, limit: int = 10, session: Session | None = None) -> list[ArtistTotal]:
    period = Period.of(month)
    with transaction(session) as s:
        rows = s.execute(_TOP_ARTISTS, {"ps": period.start, "limit": limit}).all()
    # uuid.UUID(str(…)): SQLite hands raw text SQL the 32-digit storage form.
    return [
        ArtistTotal(
            str(uuid.UUID(str(r.artist_id))),
            r.username,
            int(r.total_cents),
            int(r.listener_count),
            int(r.contribution_count),
        )
        for r in rows
    ]

"""The daily analytics rollup: analytics_play, likes, reposts and downloads -> analytics_daily.

A day is the half-open UTC window [D 00:00, D+1 00:00). Each day is one transaction of one
INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE per kind. Each statement also takes in the day's existing rows
with a count of 0, so a rerun sets every column to exactly what the data says now (0 where the activity is gone);
rows left all zero are then deleted. Unchanged rows are not rewritten: a rerun over unchanged data writes nothing.
"""

from __future__ import annotations

import re
import time as clock
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from roadie.errors import InvalidInput
from tasks.batch_sql import DAY, TIMESTAMP, UTC, day_window, is_postgres, lock_key, one_row, sql, transaction

LOCK_NAMESPACE = 0x524F4C4C  # "ROLL": advisory lock ids of rollup days
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_COLUMNS = "track_id, day, plays, uniques, completions, likes, reposts, downloads"

# Distinct listeners: users by user_id, anonymous plays by ip_hash; COUNT ignores NULLs, so a play with neither
# is a play but not a listener. (Two DISTINCT aggregates measured faster here than one over a coalesced text key,
# or a two-level GROUP BY.)
# The day's stored non-zero rows come in through the UNION with a count of 0 and their stored values: a track
# whose activity is gone gets its zeros, and HAVING drops rows that would not change (ON CONFLICT would still
# lock, that is write, each of them). Stored zeros are left out: a zero needs no reset, and on a first run (the
# plays statement has just inserted the day's rows) the engagement statements then read only the new activity.
# Not a join against the table being inserted into: on a still empty table the planner may choose a nested loop
# that rescans the rows this very statement inserts.
_UNIQUES = "COUNT(DISTINCT user_id) + COUNT(DISTINCT ip_hash) FILTER (WHERE user_id IS NULL)"
_PLAYS = sql(
    f"""
    INSERT INTO analytics_daily ({_COLUMNS})
    SELECT track_id, :day, SUM(is_play), {_UNIQUES}, SUM(done), 0, 0, 0
    FROM (
        SELECT track_id, user_id, ip_hash, 1 AS is_play, CASE WHEN completed THEN 1 ELSE 0 END AS done,
               NULL AS stored_plays, NULL AS stored_uniques, NULL AS stored_completions
        FROM analytics_play
        WHERE started_at >= :lo AND started_at < :hi
        UNION ALL
        SELECT track_id, NULL, NULL, 0, 0, plays, uniques, completions FROM analytics_daily
        WHERE day = :day AND plays <> 0
    ) AS day_plays
    WHERE true
    GROUP BY track_id
    HAVING MAX(stored_plays) IS NULL OR MAX(stored_plays) <> SUM(is_play)
        OR MAX(stored_uniques) <> {_UNIQUES} OR MAX(stored_completions) <> SUM(done)
    ON CONFLICT (day, track_id) DO UPDATE
    SET plays = excluded.plays, uniques = excluded.uniques, completions = excluded.completions
    """,
    day=DAY,
    lo=TIMESTAMP,
    hi=TIMESTAMP,
)


def _engagement(table: str) -> sa.TextClause:
    # table comes from the fixed tuple below, never from input.
    counts = {kind: ("SUM(n)" if kind == table else "0") for kind in ENGAGEMENTS}
    return sql(
        f"""
        INSERT INTO analytics_daily ({_COLUMNS})
        SELECT track_id, :day, 0, 0, 0, {counts["likes"]}, {counts["reposts"]}, {counts["downloads"]}
        FROM (
            SELECT track_id, 1 AS n, NULL AS stored FROM {table} WHERE created_at >= :lo AND created_at < :hi
            UNION ALL
            SELECT track_id, 0, {table} FROM analytics_daily WHERE day = :day AND {table} <> 0
        ) AS day_{table}
        WHERE true
        GROUP BY track_id
        HAVING MAX(stored) IS NULL OR MAX(stored) <> SUM(n)
        ON CONFLICT (day, track_id) DO UPDATE SET {table} = excluded.{table}
        """,
        day=DAY,
        lo=TIMESTAMP,
        hi=TIMESTAMP,
    )


ENGAGEMENTS = ("likes", "reposts", "downloads")
_ENGAGEMENT_SQL = {table: _engagement(table) for table in ENGAGEMENTS}
_DROP_EMPTY = sql(
    "DELETE FROM analytics_daily WHERE day = :day AND plays = 0 AND likes = 0 AND reposts = 0 AND downloads = 0",
    day=DAY,
)
_DAY_TOTALS = sql(
    """
    SELECT COUNT(*) AS tracks, SUM(plays) AS plays, SUM(uniques) AS uniques, SUM(completions) AS completions,
           SUM(likes) AS likes, SUM(reposts) AS reposts, SUM(downloads) AS downloads
    FROM analytics_daily WHERE day = :day
    """,
    day=DAY,
)


@dataclass(frozen=True)
class DayRollup:
    day: date
    tracks: int
    plays: int
    uniques: int
    completions: int
    likes: int
    reposts: int
    downloads: int
    seconds: float

    def as_json(self) -> dict:
        return {"day": self.day.isoformat(), "tracks": self.tracks, "plays": self.plays}


def rollup_day(day: date, session: Session | None = None) -> DayRollup:
    """Recompute analytics_daily for one UTC day, in one transaction. Safe to rerun at any time."""
    started = clock.perf_counter()
    lo, hi = day_window(day)
    params = {"day": day, "lo": lo, "hi": hi}
    with transaction(session) as s:
        lock_key(s, LOCK_NAMESPACE, day.toordinal(), sqlite_table="analytics_daily")
        if is_postgres(s):
            # JIT compilation cost more than it saved on a day's statements (~35 ms each in bench/rollup);
            # the DISTINCT sorts of a busy day need more than the default 4 MB.
            s.execute(sa.text("SET LOCAL jit = off"))
            s.execute(sa.text("SET LOCAL work_mem = '64MB'"))
        s.execute(_PLAYS, params)
        for table in ENGAGEMENTS:
            s.execute(_ENGAGEMENT_SQL[table], params)
        s.execute(_DROP_EMPTY, params)
        totals = one_row(s, _DAY_TOTALS, params)
    return DayRollup(
        day=day, **{k: int(v) for k, v in totals.items()}, seconds=round(clock.perf_counter() - started, 4)
    )


def yesterday_utc(now: datetime | None = None) -> date:
    return ((now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=1)).date()


def parse_day(text: str, what: str = "day") -> date:
    """A strict YYYY-MM-DD (fromisoformat alone would also take 20261127 or week dates)."""
    if not isinstance(text, str) or not _ISO_DAY.fullmatch(text.strip()):
        raise InvalidInput(f"{what} must be a date as YYYY-MM-DD, got {text!r}")
    try:
        day = date.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput(f"{what} {text!r} is not a calendar date ({exc})") from None
    if day == date.max:  # its window would end after the last representable day
        raise InvalidInput(f"{what} {text!r} is out of range")
    return day


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end, both included."""
    if end < start:
        raise InvalidInput(f"the range is reversed: --from {start} is after --to {end}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def resolve_days(
    day: str | None = None, start: str | None = None, end: str | None = None, now: datetime | None = None
) -> list[date]:
    """The days a run covers: one day, an inclusive range, or (nothing given) yesterday UTC."""
    if day is not None and (start is not None or end is not None):
        raise InvalidInput("give either a day, or a range (from and to), not both")
    if day is not None:
        return [parse_day(day)]
    if start is None and end is None:
        return [yesterday_utc(now)]
    if start is None or end is None:
        raise InvalidInput("a range needs both --from and --to (both inclusive)")
    return days_between(parse_day(start, "--from"), parse_day(end, "--to"))


def describe_days(days: list[date]) -> str:
    """The run name: rollup-2026-11-27, or rollup-2026-11-01..2026-11-27 for a backfill."""
    if len(days) == 1:
        return f"rollup-{days[0]}"
    return f"rollup-{days[0]}..{days[-1]}"

"""The split itself, as set-based SQL: computed into temporary tables, then compared with what is stored so that
a rerun writes only the allocation lines and payouts that changed (artist_payouts rows keep their ids); the small
per-user unallocated lines and per-charity totals are replaced whole."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tasks.batch_sql import DAY, is_postgres, new_uuid_sql, sql
from tasks.payouts.period import PERIOD_BINDS, SUCCEEDED

UNALLOCATED_REASON = "no qualified listening"

# Working tables, private to the connection and dropped before commit. Analysed, the small ones give PostgreSQL
# the row counts a CTE hides (a CTE's estimate led it into 97k index scans, another into hashing 4M plays); the
# computed split is compared with the stored one so that a rerun writes only what changed.
_TEMP_TABLES = ("dist_payouts", "dist_new_lines", "dist_allocation", "dist_tracks", "dist_pools")

_POOLS = sql(
    f"""
    CREATE TEMP TABLE dist_pools AS
    SELECT user_id, CAST(SUM(amount_cents * artist_percent / 100) AS BIGINT) AS pool_cents,
           COUNT(*) AS contributions
    FROM contributions
    WHERE {SUCCEEDED}
    GROUP BY user_id
    """,
    **PERIOD_BINDS,
)

# Each track's owner and listening cap: the longest ready version (none known: no cap).
_TRACKS = sql(
    """
    CREATE TEMP TABLE dist_tracks AS
    SELECT t.id AS track_id, t.owner_user_id AS artist_id, MAX(v.duration_ms) AS cap_ms
    FROM tracks t
    LEFT JOIN track_versions v ON v.track_id = t.id AND v.status = 'ready'
    GROUP BY t.id, t.owner_user_id
    """
)

# weight = Σ least(watch_ms, cap) over qualified plays, cap = the longest ready version (none known: no cap).
# Largest remainder: base = pool*w // W; the pool - Σbase leftover cents go to the largest pool*w % W, ties to
# the lowest artist_id.
_ALLOCATE = sql(
    """
    CREATE TEMP TABLE dist_allocation AS
    WITH weights AS (
        SELECT p.user_id, t.artist_id,
               CAST(SUM(CASE WHEN p.watch_ms <= 0 THEN 0
                             WHEN t.cap_ms IS NULL OR t.cap_ms >= p.watch_ms THEN p.watch_ms
                             WHEN t.cap_ms > 0 THEN t.cap_ms
                             ELSE 0 END) AS BIGINT) AS weight_ms
        FROM analytics_play p
        JOIN dist_pools u ON u.user_id = p.user_id
        JOIN dist_tracks t ON t.track_id = p.track_id
        WHERE p.started_at >= :lo AND p.started_at < :hi
          AND (p.watch_ms >= 30000 OR p.completed)
          AND u.pool_cents > 0
          AND t.artist_id <> p.user_id
        GROUP BY p.user_id, t.artist_id
    ),
    weighted AS (
        SELECT w.user_id, w.artist_id, w.weight_ms, u.pool_cents,
               CAST(SUM(w.weight_ms) OVER (PARTITION BY w.user_id) AS BIGINT) AS total_weight_ms
        FROM weights w
        JOIN dist_pools u ON u.user_id = w.user_id
        WHERE w.weight_ms > 0
    ),
    shares AS (
        SELECT user_id, artist_id, weight_ms, total_weight_ms, pool_cents,
               pool_cents * weight_ms / total_weight_ms AS base_cents,
               pool_cents * weight_ms % total_weight_ms AS remainder
        FROM weighted
    ),
    ranked AS (
        SELECT user_id, artist_id, weight_ms, base_cents,
               pool_cents - CAST(SUM(base_cents) OVER (PARTITION BY user_id) AS BIGINT) AS leftover,
               ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY remainder DESC, artist_id) AS place
        FROM shares
    )
    SELECT user_id, artist_id, weight_ms, base_cents + CASE WHEN place <= leftover THEN 1 ELSE 0 END AS cents
    FROM ranked
    """,
    **PERIOD_BINDS,
)

# Lines that are gone or changed go; then the computed lines not stored (any more) are added. The lines to add
# are found first, into a table of their own: an INSERT whose NOT EXISTS reads the table it fills can get, on a
# still empty table, a nested loop that rescans every row the statement has inserted so far (quadratic: it ran
# for 14 min in bench/distribution before this). No ON CONFLICT either: under the period lock nothing else
# writes these rows, and a plain insert measured twice as fast as the upsert.
_LINES_STALE = sql(
    """
    DELETE FROM payout_allocation_lines
    WHERE period_start = :ps
      AND NOT EXISTS (
          SELECT 1 FROM dist_allocation n
          WHERE n.user_id = payout_allocation_lines.user_id AND n.artist_id = payout_allocation_lines.artist_id
            AND n.weight_ms = payout_allocation_lines.weight_ms AND n.cents = payout_allocation_lines.cents
      )
    """,
    ps=DAY,
)

_LINES_NEW = sql(
    """
    CREATE TEMP TABLE dist_new_lines AS
    SELECT n.user_id, n.artist_id, n.weight_ms, n.cents
    FROM dist_allocation n
    WHERE NOT EXISTS (
        SELECT 1 FROM payout_allocation_lines o
        WHERE o.period_start = :ps AND o.user_id = n.user_id AND o.artist_id = n.artist_id
    )
    """,
    ps=DAY,
)

_LINES_WRITE = sql(
    """
    INSERT INTO payout_allocation_lines (period_start, user_id, artist_id, weight_ms, cents)
    SELECT :ps, user_id, artist_id, weight_ms, cents FROM dist_new_lines
    """,
    ps=DAY,
)

_UNALLOCATED = sql(
    f"""
    INSERT INTO payout_unallocated_lines (period_start, user_id, cents, reason)
    SELECT :ps, u.user_id, u.pool_cents, '{UNALLOCATED_REASON}'
    FROM dist_pools u
    WHERE u.pool_cents > 0
      AND NOT EXISTS (SELECT 1 FROM dist_allocation a WHERE a.user_id = u.user_id)
    """,
    ps=DAY,
)

_CHARITY = sql(
    f"""
    INSERT INTO payout_charity_totals (period_start, charity_id, cents, contribution_count)
    SELECT :ps, charity_id, CAST(SUM(amount_cents * charity_percent / 100) AS BIGINT), COUNT(*)
    FROM contributions
    WHERE {SUCCEEDED} AND charity_id IS NOT NULL AND charity_percent > 0
    GROUP BY charity_id
    """,
    **PERIOD_BINDS,
)


# One row per artist with money, from the computed split (10k rows to upsert and to find stale rows against,
# where the stored lines are millions); verify() then checks each payout against the stored lines.
_PAYOUTS = sql(
    """
    CREATE TEMP TABLE dist_payouts AS
    SELECT a.artist_id, CAST(SUM(a.cents) AS BIGINT) AS total_cents, COUNT(*) AS listener_count,
           CAST(SUM(u.contributions) AS INTEGER) AS contribution_count
    FROM dist_allocation a
    JOIN dist_pools u ON u.user_id = a.user_id
    WHERE a.cents > 0
    GROUP BY a.artist_id
    """
)


def _payouts_upsert(new_id: str) -> sa.TextClause:
    # Upsert, not delete+insert: an artist's payout row keeps its id across reruns; unchanged rows are skipped.
    return sql(
        f"""
        INSERT INTO artist_payouts
            (id, artist_id, period_start, period_end, total_cents, contribution_count, listener_count)
        SELECT {new_id}, artist_id, :ps, :pe, total_cents, contribution_count, listener_count
        FROM dist_payouts
        WHERE true
        ON CONFLICT (artist_id, period_start) DO UPDATE
        SET period_end = excluded.period_end, total_cents = excluded.total_cents,
            contribution_count = excluded.contribution_count, listener_count = excluded.listener_count
        WHERE artist_payouts.period_end <> excluded.period_end OR artist_payouts.total_cents <> excluded.total_cents
           OR artist_payouts.contribution_count <> excluded.contribution_count
           OR artist_payouts.listener_count <> excluded.listener_count
        """,
        **PERIOD_BINDS,
    )


_PAYOUTS_STALE = sql(
    """
    DELETE FROM artist_payouts
    WHERE period_start = :ps
      AND NOT EXISTS (SELECT 1 FROM dist_payouts n WHERE n.artist_id = artist_payouts.artist_id)
    """,
    ps=DAY,
)

# Small tables: replaced whole (the rows come out identical when nothing changed).
_CLEAR = [
    sql(f"DELETE FROM {table} WHERE period_start = :ps", ps=DAY)
    for table in ("payout_unallocated_lines", "payout_charity_totals")
]


def _prepare_temp(s: Session, table: str, key: str) -> None:
    """PostgreSQL: statistics for the planner, which then hash-joins. SQLite: an index on the join key, without
    which it joined the temp tables by nested scans (70 s instead of 2 s for 200k plays)."""
    if is_postgres(s):
        s.execute(sa.text(f"ANALYZE {table}"))
    else:
        s.execute(sa.text(f"CREATE INDEX {table}_key ON {table} ({key})"))


def _drop_temp_tables(s: Session) -> None:
    for table in _TEMP_TABLES:
        s.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def write_split(s: Session, params: dict[str, Any]) -> None:
    """Compute the period's split into the temporary tables and bring the stored lines, payouts and totals in line
    with it; the temporary tables are dropped again."""
    if is_postgres(s):
        # Room for the per-(user, artist) hash aggregate and the window sort of a big month.
        s.execute(sa.text("SET LOCAL work_mem = '256MB'"))
    _drop_temp_tables(s)
    s.execute(_POOLS, params)
    s.execute(_TRACKS, params)
    _prepare_temp(s, "dist_pools", "user_id")
    _prepare_temp(s, "dist_tracks", "track_id")
    s.execute(_ALLOCATE, params)
    if not is_postgres(s):  # PostgreSQL needs no statistics to hash 2M rows
        _prepare_temp(s, "dist_allocation", "user_id, artist_id")
    s.execute(_LINES_STALE, params)
    s.execute(_LINES_NEW, params)
    s.execute(_LINES_WRITE, params)
    for clear in _CLEAR:
        s.execute(clear, params)
    s.execute(_UNALLOCATED, params)
    s.execute(_CHARITY, params)
    s.execute(_PAYOUTS, params)
    _prepare_temp(s, "dist_payouts", "artist_id")
    s.execute(_payouts_upsert(new_uuid_sql(s)), params)
    s.execute(_PAYOUTS_STALE, params)
    _drop_temp_tables(s)

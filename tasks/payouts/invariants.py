"""The distribution's invariants: contributions whose shares cannot be computed are refused before anything is
written, and what was written is checked against what the contributions say before commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from roadie.errors import InvalidInput, RoadieError
from tasks.batch_sql import one_row, sql
from tasks.payouts.period import PERIOD_BINDS, SUCCEEDED, Period, bind_params

INT64_MAX = 2**63 - 1


class InvalidContributions(InvalidInput):
    """Contributions whose shares cannot be computed (e.g. percentages over 100 in total)."""


class InvariantViolation(RoadieError):
    """The written results do not add up. Nothing was committed. Never retried: it is a bug or tampering."""


@dataclass(frozen=True)
class InvariantCheck:
    name: str
    left: int
    right: int

    @property
    def ok(self) -> bool:
        return self.left == self.right


_POOLS_CTE = f"""
pools AS (
    SELECT user_id, CAST(SUM(amount_cents * artist_percent / 100) AS BIGINT) AS pool_cents
    FROM contributions
    WHERE {SUCCEEDED}
    GROUP BY user_id
    HAVING SUM(amount_cents * artist_percent / 100) > 0
)"""

_INVALID = f"""
    FROM contributions
    WHERE {SUCCEEDED}
      AND (amount_cents < 0 OR artist_percent < 0 OR charity_percent < 0
           OR artist_percent + charity_percent > 100
           OR (charity_percent > 0 AND charity_id IS NULL))"""

_COUNT_INVALID = sql(f"SELECT COUNT(*) {_INVALID}", **PERIOD_BINDS)
_SAMPLE_INVALID = sql(
    f"SELECT id, amount_cents, artist_percent, charity_percent, charity_id {_INVALID} ORDER BY created_at, id LIMIT 10",
    **PERIOD_BINDS,
)


# The figures the invariants compare: what the contributions say, against what was written.
_FIGURES = sql(
    f"""
    WITH {_POOLS_CTE},
    contributed AS (
        SELECT COUNT(*) AS contributions,
               CAST(SUM(amount_cents) AS BIGINT) AS amount_cents,
               CAST(SUM(amount_cents * artist_percent / 100) AS BIGINT) AS artist_cents,
               CAST(SUM(amount_cents * charity_percent / 100) AS BIGINT) AS charity_share_cents,
               CAST(SUM(amount_cents - amount_cents * artist_percent / 100
                        - amount_cents * charity_percent / 100) AS BIGINT) AS platform_cents
        FROM contributions WHERE {SUCCEEDED}
    ),
    allocated AS (
        SELECT user_id, CAST(SUM(cents) AS BIGINT) AS cents, CAST(SUM(weight_ms) AS BIGINT) AS weight_ms
        FROM payout_allocation_lines WHERE period_start = :ps
        GROUP BY user_id
    ),
    by_artist AS (
        SELECT artist_id, CAST(SUM(cents) AS BIGINT) AS cents, COUNT(*) AS listeners
        FROM payout_allocation_lines WHERE period_start = :ps AND cents > 0
        GROUP BY artist_id
    ),
    unallocated AS (
        SELECT user_id, cents FROM payout_unallocated_lines WHERE period_start = :ps
    )
    SELECT
        (SELECT contributions FROM contributed) AS contributions,
        (SELECT amount_cents FROM contributed) AS amount_cents,
        (SELECT artist_cents FROM contributed) AS artist_cents,
        (SELECT charity_share_cents FROM contributed) AS charity_share_cents,
        (SELECT platform_cents FROM contributed) AS platform_cents,
        (SELECT CAST(SUM(pool_cents) AS BIGINT) FROM pools) AS pool_cents,
        (SELECT CAST(SUM(total_cents) AS BIGINT) FROM artist_payouts WHERE period_start = :ps) AS paid_cents,
        (SELECT COUNT(*) FROM artist_payouts WHERE period_start = :ps) AS artists,
        (SELECT CAST(SUM(cents) AS BIGINT) FROM allocated) AS allocated_cents,
        (SELECT COUNT(*) FROM allocated) AS listeners,
        (SELECT CAST(SUM(cents) AS BIGINT) FROM unallocated) AS unallocated_cents,
        (SELECT COUNT(*) FROM unallocated) AS unallocated_users,
        (SELECT CAST(SUM(cents) AS BIGINT) FROM payout_charity_totals WHERE period_start = :ps) AS charity_cents,
        (SELECT COUNT(*) FROM pools u
            LEFT JOIN allocated a ON a.user_id = u.user_id
            LEFT JOIN unallocated x ON x.user_id = u.user_id
            WHERE COALESCE(a.cents, 0) + COALESCE(x.cents, 0) <> u.pool_cents
               OR (a.user_id IS NOT NULL AND x.user_id IS NOT NULL)) AS pools_split_inexactly,
        (SELECT COUNT(*) FROM allocated a
            WHERE NOT EXISTS (SELECT 1 FROM pools u WHERE u.user_id = a.user_id)) AS lines_without_pool,
        (SELECT COUNT(*) FROM by_artist b
            LEFT JOIN artist_payouts p ON p.artist_id = b.artist_id AND p.period_start = :ps
            WHERE p.artist_id IS NULL OR p.total_cents <> b.cents OR p.listener_count <> b.listeners)
        + (SELECT COUNT(*) FROM artist_payouts p
            WHERE p.period_start = :ps
              AND NOT EXISTS (SELECT 1 FROM by_artist b WHERE b.artist_id = p.artist_id)) AS payouts_off_lines,
        (SELECT MAX(pool_cents) FROM pools) AS max_pool_cents,
        (SELECT MAX(weight_ms) FROM allocated) AS max_weight_ms
    """,
    **PERIOD_BINDS,
)


def check_contributions(s: Session, period: Period, params: dict[str, Any]) -> None:
    bad = s.execute(_COUNT_INVALID, params).scalar_one()
    if not bad:
        return
    samples = []
    for row in s.execute(_SAMPLE_INVALID, params):
        why = []
        if row.artist_percent + row.charity_percent > 100:
            why.append(
                f"artist {row.artist_percent}% + charity {row.charity_percent}% = "
                f"{row.artist_percent + row.charity_percent}% > 100%"
            )
        if row.amount_cents < 0:
            why.append(f"negative amount {row.amount_cents}")
        if row.artist_percent < 0 or row.charity_percent < 0:
            why.append("negative percentage")
        if row.charity_percent > 0 and row.charity_id is None:
            why.append(f"charity {row.charity_percent}% but no charity_id")
        samples.append(f"{row.id} ({'; '.join(why)})")
    more = f" and {bad - len(samples)} more" if bad > len(samples) else ""
    raise InvalidContributions(
        f"{bad} succeeded contribution(s) in {period.label} are invalid, nothing was written; fix them and rerun: "
        + ", ".join(samples)
        + more
    )


def _checks(f: dict[str, Any]) -> tuple[InvariantCheck, ...]:
    return (
        InvariantCheck(
            "Σ payouts + Σ unallocated = Σ pools", f["paid_cents"] + f["unallocated_cents"], f["pool_cents"]
        ),
        InvariantCheck(
            "Σ artist shares + Σ charity shares + Σ platform = Σ amount_cents",
            f["paid_cents"] + f["unallocated_cents"] + f["charity_cents"] + f["platform_cents"],
            f["amount_cents"],
        ),
        InvariantCheck("Σ pools = Σ artist shares", f["pool_cents"], f["artist_cents"]),
        InvariantCheck("Σ allocation lines = Σ payouts", f["allocated_cents"], f["paid_cents"]),
        InvariantCheck("Σ charity totals = Σ charity shares", f["charity_cents"], f["charity_share_cents"]),
        InvariantCheck("users whose pool is not split exactly = 0", f["pools_split_inexactly"], 0),
        InvariantCheck("users with allocation lines but no pool = 0", f["lines_without_pool"], 0),
        InvariantCheck("artists whose payout differs from their allocation lines = 0", f["payouts_off_lines"], 0),
        # SQLite turns an overflowing integer product into a float; PostgreSQL raises. Prove neither happened.
        InvariantCheck("pool × weight fits in 64 bits", int(f["max_pool_cents"] * f["max_weight_ms"] <= INT64_MAX), 1),
    )


def verify(s: Session, period: Period) -> tuple[dict[str, Any], tuple[InvariantCheck, ...]]:
    """Compare the period's written results with its contributions; raise InvariantViolation on a mismatch."""
    figures = {k: int(v) for k, v in one_row(s, _FIGURES, bind_params(period)).items()}
    checks = _checks(figures)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise InvariantViolation(
            f"distribution of {period.label} does not add up, nothing was committed: "
            + "; ".join(f"{c.name}: {c.left} != {c.right}" for c in failed)
        )
    return figures, checks

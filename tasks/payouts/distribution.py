"""The monthly user-centric distribution, as set-based SQL in one transaction per month.

Rules (issue 4), all in integer cents:
- a month is [M-01 00:00 UTC, next month 00:00 UTC); contributions count when succeeded and created in it;
- per contribution: artist share = amount*artist_percent // 100, charity share = amount*charity_percent // 100,
  the platform keeps the rest; percentages adding up to more than 100 abort the run;
- a user's pool = the sum of their artist shares, split over the artists they listened to by weight =
  Σ least(watch_ms, duration of the track's longest ready version) over qualified plays (>= 30 s or completed),
  never their own tracks;
- the split is largest remainder: base = pool*w // W, and the pool - Σbase leftover cents go one each to the
  largest pool*w % W, ties to the lowest artist_id; a pool with no weight goes whole to an unallocated line.

The split is computed into temporary tables, then compared with what is stored: a rerun writes only the
allocation lines and payouts that changed and deletes the ones that no longer apply (so artist_payouts rows keep
their ids); the small per-user unallocated lines and per-charity totals are replaced whole. The invariants are
then checked on what is stored, before commit. Runs of one period are serialised by an advisory lock; a period
marked paid is frozen.
"""

from __future__ import annotations

import time as clock
from datetime import date, datetime

from sqlalchemy.orm import Session

from roadie.errors import InvalidInput
from tasks.batch_sql import DAY, TIMESTAMP, UTC, lock_key, sql, transaction
from tasks.payouts.invariants import InvariantViolation, check_contributions, verify
from tasks.payouts.period import PERIOD_BINDS, Period, bind_params
from tasks.payouts.report import LOAD_RUN, DistributionResult, result
from tasks.payouts.steps import write_split

LOCK_NAMESPACE = 0x44495354  # "DIST": advisory lock ids of distribution periods


class PeriodPaid(InvalidInput):
    """The period's money has gone out; its results are frozen."""


_RUN_STATUS = sql("SELECT status, paid_at FROM payout_runs WHERE period_start = :ps", ps=DAY)

_SAVE_RUN = sql(
    """
    INSERT INTO payout_runs (period_start, period_end, status, contributions, amount_cents, pool_cents, paid_cents,
                             unallocated_cents, charity_cents, platform_cents, artists, listeners,
                             unallocated_users, computed_at, paid_at)
    VALUES (:ps, :pe, 'computed', :contributions, :amount_cents, :pool_cents, :paid_cents, :unallocated_cents,
            :charity_cents, :platform_cents, :artists, :listeners, :unallocated_users, :now, NULL)
    ON CONFLICT (period_start) DO UPDATE
    SET period_end = excluded.period_end, status = 'computed', contributions = excluded.contributions,
        amount_cents = excluded.amount_cents, pool_cents = excluded.pool_cents, paid_cents = excluded.paid_cents,
        unallocated_cents = excluded.unallocated_cents, charity_cents = excluded.charity_cents,
        platform_cents = excluded.platform_cents, artists = excluded.artists, listeners = excluded.listeners,
        unallocated_users = excluded.unallocated_users, computed_at = excluded.computed_at, paid_at = NULL
    """,
    **PERIOD_BINDS,
)

_MARK_PAID = sql(
    "UPDATE payout_runs SET status = 'paid', paid_at = :now WHERE period_start = :ps", ps=DAY, now=TIMESTAMP
)


def _lock_period(s: Session, period: Period) -> None:
    lock_key(s, LOCK_NAMESPACE, period.lock_id, sqlite_table="payout_runs")


def _refuse_if_paid(s: Session, period: Period) -> None:
    row = s.execute(_RUN_STATUS, {"ps": period.start}).first()
    if row is not None and row.status == "paid":
        raise PeriodPaid(
            f"period {period.label} was marked paid at {row.paid_at}; its payouts are frozen and will not be recomputed"
        )


def distribute_month(month: Period | date | str, session: Session | None = None) -> DistributionResult:
    """Compute (or recompute, replacing) one month's distribution in one transaction."""
    started = clock.perf_counter()
    period = Period.of(month)
    params = bind_params(period)
    with transaction(session) as s:
        _lock_period(s, period)
        _refuse_if_paid(s, period)
        check_contributions(s, period, params)
        write_split(s, params)
        figures, checks = verify(s, period)
        s.execute(_SAVE_RUN, {**params, **figures, "now": datetime.now(UTC)})
        run = s.execute(LOAD_RUN, {"ps": period.start}).mappings().one()
    return result(period, run, checks, clock.perf_counter() - started)


def mark_paid(month: Period | date | str, session: Session | None = None) -> DistributionResult:
    """Freeze a computed period once its money has gone out. Re-verifies it against the current data first;
    marking a paid period again changes nothing."""
    started = clock.perf_counter()
    period = Period.of(month)
    with transaction(session) as s:
        _lock_period(s, period)
        run = s.execute(LOAD_RUN, {"ps": period.start}).mappings().first()
        if run is None:
            raise InvalidInput(
                f"period {period.label} has not been computed; run `roadie distribute --month "
                f"{period.label}` and check it before marking it paid"
            )
        if run["status"] == "paid":  # what went out is what stands; no checks against today's data
            return result(period, run, (), clock.perf_counter() - started)
        try:
            _, checks = verify(s, period)
        except InvariantViolation as exc:
            raise InvariantViolation(
                f"{exc}. The data changed since it was computed: rerun `roadie distribute "
                f"--month {period.label}`, check it, then mark it paid"
            ) from None
        s.execute(_MARK_PAID, {"ps": period.start, "now": datetime.now(UTC)})
        run = s.execute(LOAD_RUN, {"ps": period.start}).mappings().one()
    return result(period, run, checks, clock.perf_counter() - started)

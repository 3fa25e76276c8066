"""Thin Prefect tasks over tasks.payouts.distribution and report (kept apart so the CLI can run the SQL without
importing Prefect). Retries only for transient database trouble: invalid data, a paid period or a broken invariant
fail at once."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from roadie.retries import transient_retries
from tasks.payouts import distribution, report
from tasks.payouts.period import Period
from tasks.payouts.report import ArtistTotal, DistributionResult


# NO_CACHE: a rerun must recompute; the data may have changed since.
@task(task_run_name="distribute-{period.label}", cache_policy=NO_CACHE, **transient_retries())
def distribute_month(period: Period) -> DistributionResult:
    return distribution.distribute_month(period)


@task(cache_policy=NO_CACHE, **transient_retries())
def top_artists(period: Period, limit: int = 10) -> list[ArtistTotal]:
    return report.top_artists(period, limit)

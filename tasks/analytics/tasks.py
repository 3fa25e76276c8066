"""Thin Prefect tasks over tasks.analytics.rollup (kept apart so the CLI can run the SQL without importing
Prefect). Retries only for transient database trouble; a bad day is invalid input and fails at once."""

from __future__ import annotations

from datetime import date

from prefect import task
from prefect.cache_policies import NO_CACHE

from roadie.limits import db_batch_slot
from roadie.retries import transient_retries
from tasks.analytics import rollup
from tasks.analytics.rollup import DayRollup


# NO_CACHE: a rerun must recompute; the data may have changed since.
@task(task_run_name="rollup-{day}", cache_policy=NO_CACHE, **transient_retries())
def rollup_day(day: date) -> DayRollup:
    # The slot is global (every worker, every backfill): day transactions must not swamp the database.
    with db_batch_slot():
        return rollup.rollup_day(day)

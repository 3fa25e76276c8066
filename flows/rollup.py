"""analytics-rollup: recompute analytics_daily for a day (default yesterday UTC) or backfill a range."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from roadie.errors import InvalidInput
from roadie.limits import DB_BATCH_CONCURRENCY
from roadie.params import Day
from tasks.analytics.rollup import describe_days, resolve_days
from tasks.analytics.tasks import rollup_day


def _run_name() -> str:
    params = flow_run.parameters
    try:
        return describe_days(resolve_days(params.get("day"), params.get("start"), params.get("end")))
    except InvalidInput:
        return "rollup-invalid-dates"  # the flow itself then fails with the reason


# Threads never outnumber the global db-batch slots: the rest of a long backfill waits here, not on the server.
@flow(
    name="analytics-rollup",
    flow_run_name=_run_name,
    # Prefect's stubs: TaskRunner is invariant in its future type, so no runner class but the base type matches
    # the decorator's TaskRunner[PrefectFuture[Any]] (its own docs pass a ThreadPoolTaskRunner here, as we do).
    task_runner=ThreadPoolTaskRunner(max_workers=DB_BATCH_CONCURRENCY[1]),  # type: ignore[arg-type]
)
def analytics_rollup(day: Day = None, start: Day = None, end: Day = None) -> list[dict]:
    """One transaction per UTC day; `start`..`end` (both YYYY-MM-DD, inclusive) is a backfill."""
    days = resolve_days(day, start, end)
    futures = [rollup_day.submit(d) for d in days]
    results = [f.result() for f in futures]
    rows = [
        {
            "day": r.day.isoformat(),
            "tracks": r.tracks,
            "plays": r.plays,
            "uniques": r.uniques,
            "completions": r.completions,
            "likes": r.likes,
            "reposts": r.reposts,
            "downloads": r.downloads,
            "seconds": r.seconds,
        }
        for r in results
    ]
    create_table_artifact(
        key="analytics-rollup", table=rows, description=f"analytics_daily totals per day, {describe_days(days)}"
    )
    get_run_logger().info("rolled up %d day(s), %d plays", len(rows), sum(r.plays for r in results))
    return rows

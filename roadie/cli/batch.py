"""`roadie rollup` and `roadie distribute`: the batch jobs, run here and now on ROADIE_DATABASE_URL.

They call the set-based SQL directly (no Prefect import, so they start fast); the flows in flows/rollup.py and
flows/distribution.py run the same functions on a schedule or from the UI.

Each command imports what it needs in its own body (each such import marked `noqa: PLC0415`, with what it costs):
`roadie --help` imports none of it, not even the settings (pydantic-settings), and starts in ~0.25 s
(tests/test_cli_startup.py).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import typer

from roadie.cli.app import app, emit_json, fail


def _prepare_database() -> None:
    """The embedded SQLite database migrates itself; a shared PostgreSQL is migrated by `roadie db upgrade`."""
    # deferred: SQLAlchemy, settings
    from roadie.db.session import upgrade_if_behind  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    if get_settings().database_url.startswith("sqlite"):
        upgrade_if_behind()  # Alembic only when the schema is behind: one SELECT otherwise


def _workers() -> int:
    # deferred: settings
    from roadie.limits import DB_BATCH_CONCURRENCY  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    # SQLite has one writer at a time; more threads would only queue on its lock.
    return 1 if get_settings().database_url.startswith("sqlite") else DB_BATCH_CONCURRENCY[1]


@app.command()
def rollup(
    day: str | None = typer.Option(None, "--day", help="One UTC day, YYYY-MM-DD (default: yesterday)."),
    start: str | None = typer.Option(None, "--from", help="First day of a backfill, YYYY-MM-DD."),
    end: str | None = typer.Option(None, "--to", help="Last day of a backfill, YYYY-MM-DD (inclusive)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"days": [{"day", "tracks", "plays"}], "seconds"}.'),
) -> None:
    """Recompute analytics_daily for a UTC day or a range of days. Safe to rerun: results are replaced."""
    # deferred: SQLAlchemy, settings
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from roadie.errors import InvalidInput, RoadieError  # noqa: PLC0415
    from tasks.analytics.rollup import resolve_days, rollup_day  # noqa: PLC0415

    try:
        days = resolve_days(day, start, end)
    except InvalidInput as exc:
        raise fail(str(exc), 2) from None
    started = time.perf_counter()
    _prepare_database()
    try:
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            results = list(pool.map(rollup_day, days))
    except (RoadieError, SQLAlchemyError) as exc:
        raise fail(str(exc), 1) from None
    seconds = round(time.perf_counter() - started, 3)
    if as_json:
        emit_json({"days": [r.as_json() for r in results], "seconds": seconds})
        return
    typer.echo(
        f"{'day':<10}  {'tracks':>8}  {'plays':>10}  {'uniques':>9}  {'likes':>7}  {'reposts':>7}  {'downloads':>9}"
    )
    for r in results:
        typer.echo(
            f"{r.day.isoformat():<10}  {r.tracks:>8}  {r.plays:>10}  {r.uniques:>9}  {r.likes:>7}  "
            f"{r.reposts:>7}  {r.downloads:>9}"
        )
    typer.echo(f"{len(results)} day(s) in {seconds:.2f} s")


@app.command()
def distribute(
    month: str | None = typer.Option(None, "--month", help="YYYY-MM (default: last month, UTC)."),
    mark_paid: bool = typer.Option(
        False,
        "--mark-paid",
        help="Freeze the computed month once its money is out; a paid month refuses recomputation.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the totals as one JSON object."),
) -> None:
    """Split the month's contributions over the artists each user listened to (user-centric, exact to the
    cent). Reruns replace the month's results."""
    # deferred: SQLAlchemy, settings
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from roadie.errors import InvalidInput, RoadieError  # noqa: PLC0415
    from tasks.payouts import distribution as dist  # noqa: PLC0415
    from tasks.payouts.period import Period, last_month  # noqa: PLC0415

    try:
        period = Period.of(month) if month is not None else last_month()
    except InvalidInput as exc:
        raise fail(str(exc), 2) from None
    _prepare_database()
    try:
        result = dist.mark_paid(period) if mark_paid else dist.distribute_month(period)
    except (RoadieError, SQLAlchemyError) as exc:
        raise fail(str(exc), 1) from None
    if as_json:
        emit_json({**result.as_json(), "status": result.status} if mark_paid else result.as_json())
        return
    typer.echo(f"distribution {result.period} ({result.status})")
    for label, cents in (
        ("contributions", result.amount_cents),
        ("user pools", result.pool_cents),
        ("paid to artists", result.paid_cents),
        ("unallocated", result.unallocated_cents),
        ("charities", result.charity_cents),
        ("platform", result.platform_cents),
    ):
        typer.echo(f"  {label:<16} {cents // 100:>12,}.{cents % 100:02d}")
    typer.echo(
        f"  {result.artists} artists, {result.listeners} listeners, "
        f"{result.unallocated_users} paying users without qualified listening"
    )
    for check in result.checks:
        typer.echo(f"  {'ok' if check.ok else 'FAILED':<6} {check.name}")
    typer.echo(f"  {result.seconds:.2f} s")

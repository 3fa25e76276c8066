"""distribution: the monthly user-centric split of contributions (default: last month)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from roadie.errors import InvalidInput
from roadie.params import Month
from tasks.payouts.period import Period, last_month
from tasks.payouts.report import ArtistTotal, DistributionResult
from tasks.payouts.tasks import distribute_month, top_artists


def _period(month: str | None) -> Period:
    return Period.of(month) if month else last_month()


def _run_name() -> str:
    try:
        return f"distribution-{_period(flow_run.parameters.get('month')).label}"
    except InvalidInput:
        return "distribution-invalid-month"  # the flow itself then fails with the reason


def _cents(value: int) -> str:
    return f"{value // 100:,}.{value % 100:02d}"


def report(result: DistributionResult, top: list[ArtistTotal]) -> str:
    lines = [
        f"# Distribution {result.period}",
        "",
        f"{result.contributions} succeeded contributions, {result.listeners} listeners paid "
        f"{result.artists} artists; {result.unallocated_users} paying users had no qualified listening.",
        "",
        "| | amount |",
        "|---|---:|",
        f"| contributions | {_cents(result.amount_cents)} |",
        f"| user pools (artist shares) | {_cents(result.pool_cents)} |",
        f"| paid to artists | {_cents(result.paid_cents)} |",
        f"| unallocated | {_cents(result.unallocated_cents)} |",
        f"| charities | {_cents(result.charity_cents)} |",
        f"| platform | {_cents(result.platform_cents)} |",
        "",
        "## Top artists",
        "",
        "| artist | paid | listeners | contributions |",
        "|---|---:|---:|---:|",
        *(f"| {a.username} | {_cents(a.total_cents)} | {a.listener_count} | {a.contribution_count} |" for a in top),
        "",
        "## Invariants (checked before commit)",
        "",
        "| check | left | right | |",
        "|---|---:|---:|---|",
        *(f"| {c.name} | {c.left} | {c.right} | {'ok' if c.ok else 'FAILED'} |" for c in result.checks),
        "",
        f"Computed in {result.seconds:.2f} s.",
    ]
    return "\n".join(lines)


@flow(name="distribution", flow_run_name=_run_name)
def distribution(month: Month = None) -> dict:
    """Compute (or recompute, replacing) month YYYY-MM; a period marked paid is refused."""
    period = _period(month)
    result = distribute_month(period)
    top = top_artists(period)
    create_markdown_artifact(
        key="distribution", markdown=report(result, top), description=f"distribution {period.label}"
    )
    get_run_logger().info("distribution %s: %s", period.label, result.as_json())
    return result.as_json()

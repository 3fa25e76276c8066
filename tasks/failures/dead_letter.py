"""Dead letters: a job that failed for good gets a `failed_jobs` row, a Prefect event and a notification.

Nothing here runs inside the dying run. An automation on the server reacts to `prefect.flow-run.Failed` /
`Crashed` events of runs tagged `roadie-job` and starts the `dead-letter` deployment (flows/dead_letter.py)
on any live worker; a second automation turns runs whose heartbeats stopped (the worker was killed) into
`Crashed`, which then lands here the same way. `sweep()` catches up on anything the automations missed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select

from roadie.catalog import mark_failed
from roadie.db.models import FailedJob
from roadie.db.session import session_scope
from roadie.errors import mask_url, redact
from roadie.params import flow_run_uuid
from roadie.prefect_api import all_pages, api_time, create_run, plain_time, read_deployment, state_type

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

# Prefect (~0.5 s to import) is imported by the functions that use it: `roadie failed` imports this module to list
# failed jobs from the database alone, and should not wait for it.

DEAD_STATE_TYPES = ("FAILED", "CRASHED")
JOB_TAG = "roadie-job"
EVENT_NAME = "roadie.job.dead-lettered"
# Jobs whose parameters name a track version; a crash leaves that version `processing` unless we fail it.
VERSION_JOBS = frozenset({"media-ingest", "transcode"})


@dataclass(frozen=True)
class FailedRun:
    """Everything failed_jobs keeps about one run, read from the Prefect API."""

    flow_run_id: str
    flow_run_name: str
    flow_name: str
    deployment_name: str | None
    parameters: dict[str, Any]
    state: str
    error: str
    attempts: int
    failed_at: datetime


@dataclass(frozen=True)
class DeadLetter:
    id: str
    failed: FailedRun
    first_time: bool


def describe_failed_run(client: SyncPrefectClient, flow_run_id: str) -> FailedRun:
    """`flow_run_id` bare or as an event's resource id (`prefect.flow-run.<uuid>`, what the automation passes)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: PLC0415 - `roadie failed` lists without Prefect

    run = client.read_flow_run(flow_run_uuid(flow_run_id))
    if state_type(run) not in DEAD_STATE_TYPES:
        raise ValueError(f"flow run {run.name} is {run.state_name}, not failed or crashed")
    flow = client.read_flow(run.flow_id)
    deployment = client.read_deployment(run.deployment_id) if run.deployment_id else None
    # Attempts: a retried step counts each try, so "4" says the retries ran out, "1" that nothing was retried.
    of_run = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
    task_runs = all_pages(
        lambda limit, offset: client.read_task_runs(flow_run_filter=of_run, limit=limit, offset=offset)
    )
    task_attempts = [t.run_count for t in task_runs if state_type(t) in DEAD_STATE_TYPES]
    message = run.state.message if run.state else None
    return FailedRun(
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        flow_name=flow.name,
        deployment_name=deployment.name if deployment else None,
        parameters=dict(run.parameters),
        state=run.state_name or state_type(run) or "Failed",
        error=redact(message or f"{run.state_name} without a message")[:10_000],
        attempts=max([run.run_count, 1, *task_attempts]),
        failed_at=plain_time(run.end_time) or datetime.now(UTC),
    )


def record(failed: FailedRun) -> DeadLetter:
    """Insert or refresh the failed_jobs row of this run (one row per run: a rerun of the hook is harmless)."""
    run_id = uuid.UUID(failed.flow_run_id)
    values = {
        "flow_name": failed.flow_name,
        "deployment_name": failed.deployment_name,
        "flow_run_name": failed.flow_run_name,
        "parameters": failed.parameters,
        "state": failed.state,
        "error": failed.error,
        "attempts": failed.attempts,
        "failed_at": failed.failed_at,
    }
    with session_scope() as session:
        row = session.scalar(select(FailedJob).where(FailedJob.flow_run_id == run_id).with_for_update())
        first_time = row is None
        if row is None:
            row = FailedJob(flow_run_id=run_id, **values)
            session.add(row)
        else:
            for name, value in values.items():
                setattr(row, name, value)
        session.flush()
        row_id = str(row.id)
    if failed.deployment_name in VERSION_JOBS:
        fail_stranded_version(failed)
    return DeadLetter(row_id, failed, first_time)


def fail_stranded_version(failed: FailedRun) -> bool:
    """A crashed ingest never marked its version; do it here so the API does not show `processing` forever."""
    try:
        version_id = uuid.UUID(str(failed.parameters.get("version_id")))
    except ValueError:
        return False
    message = (
        f"the {failed.deployment_name} run {failed.flow_run_name} ended {failed.state}: {failed.error}; "
        f"retry it with `roadie failed --retry`"
    )
    # Only while the dead run still owns the version: a retry may have claimed it since (roadie.catalog.mark_failed).
    return mark_failed(str(version_id), message[:2000], stranded_by=failed.flow_run_id)


def notification_text(letter: DeadLetter) -> tuple[str, str]:
    f = letter.failed
    subject = f"roadie: {f.deployment_name or f.flow_name} run {f.flow_run_name} {f.state.lower()}"
    body = (
        f"{subject} after {f.attempts} attempt(s) at {f.failed_at.isoformat()}.\n"
        f"error: {f.error}\nparameters: {f.parameters}\n"
        f"failed job {letter.id}; re-queue with `roadie failed --retry {letter.id}`"
    )
    return subject, body


def payload(letter: DeadLetter) -> dict[str, Any]:
    f = letter.failed
    return {
        "failed_job_id": letter.id,
        "flow": f.flow_name,
        "deployment": f.deployment_name,
        "flow_run_id": f.flow_run_id,
        "flow_run_name": f.flow_run_name,
        "parameters": f.parameters,
        "state": f.state,
        "error": f.error,
        "attempts": f.attempts,
        "failed_at": f.failed_at.isoformat(),
    }


def emit(letter: DeadLetter) -> None:
    """A `roadie.job.dead-lettered` event, related to the failed run, for automations and the event feed."""
    from prefect.events import emit_event  # noqa: PLC0415 - `roadie failed` lists without Prefect

    f = letter.failed
    related = [
        {
            "prefect.resource.id": f"prefect.flow-run.{f.flow_run_id}",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": f.flow_run_name,
        }
    ]
    emit_event(
        event=EVENT_NAME,
        resource={
            "prefect.resource.id": f"roadie.failed-job.{letter.id}",
            "prefect.resource.name": f"{f.deployment_name or f.flow_name} {f.flow_run_name}",
        },
        related=related,
        payload=payload(letter),
    )


def notify_webhook(letter: DeadLetter, url: str, timeout_s: float = 10.0) -> int:
    """POST the failed job as JSON; a non-2xx answer raises (the task retries it)."""
    subject, body = notification_text(letter)
    try:
        response = httpx.post(url, json={**payload(letter), "subject": subject, "text": body}, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        # httpx names the whole URL, and a webhook's query is its key: say which hook without it (and `from None`,
        # so the log's traceback does not carry httpx's own message either).
        status = (
            f"answered {exc.response.status_code}"
            if isinstance(exc, httpx.HTTPStatusError)
            else f"failed ({type(exc).__name__})"
        )
        raise WebhookError(f"dead-letter webhook {mask_url(url)} {status}") from None
    return response.status_code


class WebhookError(RuntimeError):
    """The dead-letter webhook did not take the notification (retried by the task)."""


def notify_block(letter: DeadLetter, block: str) -> None:
    """Send through a saved Prefect notification block, e.g. `slack-webhook/ops` or `custom-webhook/pager`."""
    from prefect.blocks.core import Block  # noqa: PLC0415 - `roadie failed` lists without Prefect

    subject, body = notification_text(letter)
    # Prefect's async_dispatch types a sync call's result as `X | Coroutine`; called from sync code it is the block.
    Block.load(block).notify(body, subject=subject)  # type: ignore[union-attr]


def sweep(client: SyncPrefectClient, since: timedelta = timedelta(days=1)) -> list[DeadLetter]:
    """Record failed or crashed job runs that have no failed_jobs row yet (e.g. no worker ran the hook)."""
    from prefect.client.schemas.filters import (  # noqa: PLC0415 - `roadie failed` lists without Prefect
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType  # noqa: PLC0415 - `roadie failed` lists without Prefect

    dead = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(t) for t in DEAD_STATE_TYPES])),
        tags=FlowRunFilterTags(all_=[JOB_TAG]),
        end_time=FlowRunFilterEndTime(after_=api_time(datetime.now(UTC) - since)),
    )
    runs = all_pages(lambda limit, offset: client.read_flow_runs(flow_run_filter=dead, limit=limit, offset=offset))
    with session_scope() as session:
        known = (
            set(session.scalars(select(FailedJob.flow_run_id).where(FailedJob.flow_run_id.in_([r.id for r in runs]))))
            if runs
            else set()
        )
    return [record(describe_failed_run(client, str(r.id))) for r in runs if r.id not in known]


def list_failed(limit: int = 50, include_retried: bool = True) -> list[FailedJob]:
    with session_scope() as session:
        query = select(FailedJob).order_by(FailedJob.failed_at.desc()).limit(limit)
        if not include_retried:
            query = query.where(FailedJob.retried_at.is_(None))
        return list(session.scalars(query))


def find_failed(job_id: str) -> FailedJob:
    """By failed-job id or flow run id (the UI shows the latter); a unique prefix of either is enough."""
    job_id = job_id.strip().lower()
    with session_scope() as session:
        try:
            exact = uuid.UUID(job_id)
            rows = list(
                session.scalars(select(FailedJob).where((FailedJob.id == exact) | (FailedJob.flow_run_id == exact)))
            )
        except ValueError:
            recent = session.scalars(select(FailedJob).order_by(FailedJob.failed_at.desc()).limit(5000))
            rows = [row for row in recent if str(row.id).startswith(job_id) or str(row.flow_run_id).startswith(job_id)]
    if len(rows) != 1:
        raise LookupError(f"{'no' if not rows else len(rows)} failed job(s) match {job_id!r}")
    return rows[0]


def retry(client: SyncPrefectClient, job_id: str) -> tuple[FailedJob, str, bool]:
    """Re-queue a failed job as a new run with the same parameters; retrying the same row twice is one run."""
    job = find_failed(job_id)
    if not job.deployment_name:
        raise ValueError(f"failed job {job.id} was not started from a deployment; run it again by hand")
    deployment = read_deployment(client, f"{job.flow_name}/{job.deployment_name}")
    run, created = create_run(
        client, deployment.id, job.parameters, idempotency_key=f"{job.deployment_name}:retry:{job.id}"
    )
    with session_scope() as session:
        row = session.get(FailedJob, job.id)
        assert row is not None
        row.retried_at = row.retried_at or datetime.now(UTC)
        row.retry_flow_run_id = run.id
        session.flush()
        session.refresh(row)
        job = row
    return job, str(run.id), created

"""The `/health` report, computed from the Prefect API (the runs are the truth), and the snapshots /health answers
from; also the queries the Prometheus metrics (roadie.ops.metrics) share.

A "queue" is a job, i.e. one roadie deployment (`media-ingest`, `transcode`, … `distribution`), as in the
original design's one queue per job. Figures:
- waiting: runs due to start (Scheduled with a start time already past, or Pending);
- active: Running (or Cancelling) runs;
- failed: runs that ended Failed or Crashed within the health window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    DeploymentFilterTags,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from roadie.errors import redact
from roadie.prefect_api import PAGE, all_pages, api_time, describe_error
from roadie.settings import Settings, get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import DeploymentResponse

JOB_TAG = "roadie-job"


@dataclass(frozen=True)
class QueueFigures:
    waiting: int
    active: int
    failed: int


@dataclass(frozen=True)
class HealthReport:
    status: str
    queues: dict[str, QueueFigures]
    workers_online: int
    failed_in_window: int
    window_minutes: int
    reasons: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "queues": {
                name: {"waiting": q.waiting, "active": q.active, "failed": q.failed} for name, q in self.queues.items()
            },
            "workers_online": self.workers_online,
            "failed_in_window": self.failed_in_window,
            "window_minutes": self.window_minutes,
            "reasons": list(self.reasons),
        }


def api_failure(exc: BaseException, settings: Settings) -> str:
    """The reason /health gives when the API fails: the cause, without a URL password or any secret."""
    return redact(f"Prefect API: {type(exc).__name__}: {describe_error(exc)}", settings)


def job_deployments(client: SyncPrefectClient) -> list[DeploymentResponse]:
    """roadie's job deployments (tag `roadie-job`), one per name: a Docker and a process variant count as one."""
    tagged = DeploymentFilter(tags=DeploymentFilterTags(all_=[JOB_TAG]))
    found = all_pages(
        lambda limit, offset: client.read_deployments(deployment_filter=tagged, limit=limit, offset=offset)
    )
    return sorted(found, key=lambda d: d.name)


def deployments_by_name(deployments: Iterable[DeploymentResponse]) -> dict[str, list[UUID]]:
    groups: dict[str, list[UUID]] = {}
    for d in deployments:
        groups.setdefault(d.name, []).append(d.id)
    return groups


def of_deployments(deployment_ids: Iterable[UUID]) -> DeploymentFilter:
    return DeploymentFilter(id=DeploymentFilterId(any_=list(deployment_ids)))


def count_due(client: SyncPrefectClient, deployment_ids: list[UUID], now: datetime) -> int:
    """Runs due to start: Scheduled with a start time already past, or Pending."""
    due = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=api_time(now)),
    )
    return client.count_flow_runs(flow_run_filter=due, deployment_filter=of_deployments(deployment_ids))


def queue_figures(
    client: SyncPrefectClient, deployment_ids: list[UUID], now: datetime, window: timedelta
) -> QueueFigures:
    def of_types(*types: StateType) -> FlowRunFilterState:
        return FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))

    scope = of_deployments(deployment_ids)
    active = client.count_flow_runs(
        flow_run_filter=FlowRunFilter(state=of_types(StateType.RUNNING, StateType.CANCELLING)), deployment_filter=scope
    )
    failed = client.count_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=of_types(StateType.FAILED, StateType.CRASHED),
            end_time=FlowRunFilterEndTime(after_=api_time(now - window)),
        ),
        deployment_filter=scope,
    )
    return QueueFigures(count_due(client, deployment_ids, now), active, failed)


def workers_online(client: SyncPrefectClient, pool: str) -> int:
    try:
        workers = client.read_workers_for_work_pool(pool, limit=PAGE)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:  # no such pool: nobody in it
            return 0
        raise
    return sum(1 for w in workers if w.status.value == "ONLINE")


def check_health(client: SyncPrefectClient, settings: Settings | None = None) -> HealthReport:
    settings = settings or get_settings()
    now = datetime.now(UTC)
    window = timedelta(minutes=settings.health_window_minutes)
    queues = {
        name: queue_figures(client, ids, now, window)
        for name, ids in deployments_by_name(job_deployments(client)).items()
    }
    online = workers_online(client, settings.work_pool)
    failed = sum(q.failed for q in queues.values())
    reasons = []
    if failed > settings.health_max_failed:
        reasons.append(
            f"{failed} runs failed in the last {settings.health_window_minutes} min "
            f"(more than {settings.health_max_failed})"
        )
    if online == 0:
        reasons.append(f"no worker online in pool {settings.work_pool}")
    return HealthReport(
        "unhealthy" if reasons else "healthy", queues, online, failed, settings.health_window_minutes, tuple(reasons)
    )


class HealthSnapshots:
    """check_health on a thread of its own, again every `every_s` after the last one finished; /health answers the
    latest at once. Under a burst the Prefect API can take seconds per call, and a check is a few dozen calls:
    computed per request, /health then took 5 s, which probes and load balancers read as down (they wait ~1 s),
    and every probe added load to the API that was already busy. The first request waits for the first check.
    A snapshot older than `stale_after_s` (the checks are stuck) is itself a reason to be unhealthy."""

    def __init__(
        self, client: SyncPrefectClient, settings: Settings, every_s: float = 2.0, stale_after_s: float = 60.0
    ):
        self.client, self.settings, self.every_s, self.stale_after_s = client, settings, every_s, stale_after_s
        self._latest: tuple[float, HealthReport | None, str | None] | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="roadie-health-checks", daemon=True)

    def start(self) -> HealthSnapshots:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._latest = (time.monotonic(), check_health(self.client, self.settings), None)
            except Exception as exc:  # the API is down: say so, with the cause (no URL password, no secret)
                self._latest = (time.monotonic(), None, api_failure(exc, self.settings))
            self._first.set()
            self._stop.wait(self.every_s)

    def answer(self, first_wait_s: float = 60.0) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) from the latest snapshot."""
        self._first.wait(first_wait_s)
        if self._latest is None:
            return 503, {"status": "unhealthy", "queues": {}, "reasons": ["the first health check has not finished"]}
        at, report, error = self._latest
        age = round(time.monotonic() - at, 1)
        if report is None:
            return 503, {"status": "unhealthy", "queues": {}, "reasons": [error], "age_s": age}
        body = {**report.as_json(), "age_s": age}
        if age > self.stale_after_s:
            body["status"] = "unhealthy"
            body["reasons"] = [
                *body.get("reasons", []),
                f"the last health check finished {age:.0f} s ago: the Prefect API is not answering",
            ]
            return 503, body
        return (200 if report.healthy else 503), body

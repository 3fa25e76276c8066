"""`/health` and Prometheus `/metrics`, both computed from the Prefect API (the runs are the truth).

A "queue" is a job, i.e. one roadie deployment (`media-ingest`, `transcode`, … `distribution`), as in the
original design's one queue per job. Figures:
- waiting: runs due to start (Scheduled with a start time already past, or Pending);
- active: Running (or Cancelling) runs;
- failed: runs that ended Failed or Crashed within the health window.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from roadie.errors import redact
from roadie.prefect_api import PAGE, all_pages, api_time, describe_error, plain_time, state_type
from roadie.settings import Settings, get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import DeploymentResponse

JOB_TAG = "roadie-job"
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Terminal state type -> the `status` label of roadie_jobs_processed_total.
STATUS_LABELS = {"COMPLETED": "completed", "FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "cancelled"}


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


def _by_name(deployments: Iterable[DeploymentResponse]) -> dict[str, list[UUID]]:
    groups: dict[str, list[UUID]] = {}
    for d in deployments:
        groups.setdefault(d.name, []).append(d.id)
    return groups


def _of(deployment_ids: Iterable[UUID]) -> DeploymentFilter:
    return DeploymentFilter(id=DeploymentFilterId(any_=list(deployment_ids)))


def count_due(client: SyncPrefectClient, deployment_ids: list[UUID], now: datetime) -> int:
    """Runs due to start: Scheduled with a start time already past, or Pending."""
    due = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=api_time(now)),
    )
    return client.count_flow_runs(flow_run_filter=due, deployment_filter=_of(deployment_ids))


def queue_figures(
    client: SyncPrefectClient, deployment_ids: list[UUID], now: datetime, window: timedelta
) -> QueueFigures:
    def of_types(*types: StateType) -> FlowRunFilterState:
        return FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))

    scope = _of(deployment_ids)
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
    queues = {name: queue_figures(client, ids, now, window) for name, ids in _by_name(job_deployments(client)).items()}
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


# ---------------------------------------------------------------------- metrics


@dataclass
class _Durations:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))  # last: +Inf
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip([*(str(b) for b in DURATION_BUCKETS), "+Inf"], self.counts, strict=False):
            running += count
            out.append((bound, running))
        return out


class JobMetrics:
    """A prometheus-client collector that reads the Prefect API on every scrape.

    Finished runs are read incrementally (by end time, newest first, ids de-duplicated) so counters only
    ever grow while the exporter lives; the first scrape backfills `metrics_backfill_hours`.
    Durations are the runs' total running time, for completed runs.
    """

    # Runs are visible a moment after their end_time is set; re-read this much behind the watermark.
    OVERLAP = timedelta(minutes=2)

    def __init__(self, client: SyncPrefectClient, settings: Settings | None = None):
        self.client = client
        self.settings = settings or get_settings()
        self._lock = threading.Lock()
        self._watermark: datetime | None = None
        self._recent: dict[UUID, datetime] = {}  # run id -> end time, for runs inside the overlap
        self.processed: dict[tuple[str, str], int] = {}
        self.durations: dict[str, _Durations] = {}

    def refresh(self) -> dict[UUID, DeploymentResponse]:
        deployments = {d.id: d for d in job_deployments(self.client)}
        now = datetime.now(UTC)
        since = (
            (self._watermark - self.OVERLAP)
            if self._watermark
            else now - timedelta(hours=self.settings.metrics_backfill_hours)
        )
        runs: list[FlowRun] = []
        if deployments:
            ended = FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(t) for t in STATUS_LABELS])),
                end_time=FlowRunFilterEndTime(after_=api_time(since)),
            )
            scope = _of(deployments)
            runs = all_pages(
                lambda limit, offset: self.client.read_flow_runs(
                    flow_run_filter=ended,
                    deployment_filter=scope,
                    sort=FlowRunSort.END_TIME_DESC,
                    limit=limit,
                    offset=offset,
                )
            )
        for run in runs:
            end_time = plain_time(run.end_time)
            if run.id in self._recent or end_time is None or run.deployment_id not in deployments:
                continue
            self._recent[run.id] = end_time
            queue = deployments[run.deployment_id].name
            status = STATUS_LABELS[state_type(run) or ""]
            self.processed[(queue, status)] = self.processed.get((queue, status), 0) + 1
            if status == "completed":
                self.durations.setdefault(queue, _Durations()).observe(run.total_run_time.total_seconds())
            if self._watermark is None or end_time > self._watermark:
                self._watermark = end_time
        if self._watermark is None:
            self._watermark = since + self.OVERLAP
        horizon = self._watermark - self.OVERLAP
        self._recent = {rid: end for rid, end in self._recent.items() if end >= horizon}
        return deployments

    def collect(self) -> Iterator[Metric]:  # prometheus_client Collector protocol
        with self._lock:
            deployments = self.refresh()
            names = sorted({d.name for d in deployments.values()})
            now = datetime.now(UTC)
            depth = {name: count_due(self.client, ids, now) for name, ids in _by_name(deployments.values()).items()}
            online = workers_online(self.client, self.settings.work_pool)

            processed = CounterMetricFamily(
                "roadie_jobs_processed", "Job runs that finished, by final state", labels=["queue", "status"]
            )
            for name in names:
                for status in STATUS_LABELS.values():
                    processed.add_metric([name, status], self.processed.get((name, status), 0))
            yield processed

            duration = HistogramMetricFamily(
                "roadie_job_duration_seconds", "Running time of completed job runs", labels=["queue"]
            )
            for name in names:
                d = self.durations.get(name, _Durations())
                duration.add_metric([name], d.cumulative(), sum_value=d.total)
            yield duration

            gauge = GaugeMetricFamily(
                "roadie_queue_depth", "Job runs due to start and not started yet", labels=["queue"]
            )
            for name in names:
                gauge.add_metric([name], depth.get(name, 0))
            yield gauge
            yield GaugeMetricFamily(
                "roadie_workers_online", f"Workers online in pool {self.settings.work_pool}", value=online
            )


def metrics_registry(client: SyncPrefectClient, settings: Settings | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(client, settings))
    return registry


# ---------------------------------------------------------------------- HTTP


class OpsServer:
    """GET /health (200 healthy, 503 unhealthy) and GET /metrics, on a background thread; nothing else.

    It binds where configured (ROADIE_HEALTH_HOST, ROADIE_HEALTH_PORT) unless told otherwise. Any other path is
    404 and any other method (HEAD, POST, PUT, DELETE, OPTIONS, TRACE, …) 405 with `Allow: GET`; /health answers
    from the latest HealthSnapshots check, /metrics asks the API per scrape; no answer carries a secret."""

    def __init__(
        self,
        client: SyncPrefectClient,
        host: str | None = None,
        port: int | None = None,
        settings: Settings | None = None,
    ):
        self.client, self.settings = client, settings or get_settings()
        host = self.settings.health_host if host is None else host
        port = self.settings.health_port if port is None else port
        registry = metrics_registry(client, self.settings)
        self.snapshots = HealthSnapshots(client, self.settings)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/health":
                        status, body = outer.snapshots.answer()
                        self._send(status, "application/json", json.dumps(body).encode())
                    elif path == "/metrics":
                        self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                    else:
                        self._send(404, "text/plain", b"try /health or /metrics\n")
                except Exception as exc:  # the API is down: say so, with the cause (no URL password, no secret)
                    body = {"status": "unhealthy", "queues": {}, "reasons": [api_failure(exc, outer.settings)]}
                    self._send(503, "application/json", json.dumps(body).encode())

            def _not_allowed(self) -> None:
                self.close_connection = True  # a body it sent is not read: do not reuse the connection
                self._send(405, "text/plain", b"only GET /health and GET /metrics\n", {"Allow": "GET"})

            def __getattr__(self, name: str) -> Any:
                # http.server looks up do_<METHOD>; every method but GET gets 405 (instead of its 501).
                if name.startswith("do_"):
                    return self._not_allowed
                raise AttributeError(name)

            def _send(self, code: int, content_type: str, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: scrapes every few seconds
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> OpsServer:
        self.snapshots.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="roadie-ops-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.snapshots.start()
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.snapshots.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

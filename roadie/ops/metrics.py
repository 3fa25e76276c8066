"""Prometheus `/metrics`, read from the Prefect API on every scrape: runs processed by final state, running time of
completed runs, queue depth, workers online."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from roadie.ops.health import count_due, deployments_by_name, job_deployments, of_deployments, workers_online
from roadie.prefect_api import all_pages, api_time, plain_time, state_type
from roadie.settings import Settings, get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import DeploymentResponse

DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Terminal state type -> the `status` label of roadie_jobs_processed_total.
STATUS_LABELS = {"COMPLETED": "completed", "FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "cancelled"}


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
            scope = of_deployments(deployments)
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
            depth = {
                name: count_due(self.client, ids, now)
                for name, ids in deployments_by_name(deployments.values()).items()
            }
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

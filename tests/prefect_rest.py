"""What the tests read from the Prefect API from outside, over REST (black-box, as the platform or an operator would
see it): tests/platform_client.py's contract plus filters, counts, states, task runs, workers and events."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.platform_client import FlowRun, PlatformClient, parse_time, run_fields

PAGE = 200  # the API's default maximum page size


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class Deployment:
    id: str
    name: str
    flow_id: str
    tags: tuple[str, ...]
    work_pool_name: str | None
    work_queue_name: str | None
    parameters: Mapping[str, Any]
    schedules: tuple[Mapping[str, Any], ...]
    concurrency_limit: int | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Deployment:
        limit = data.get("global_concurrency_limit") or {}
        return cls(
            id=data["id"],
            name=data["name"],
            flow_id=data["flow_id"],
            tags=tuple(data.get("tags") or ()),
            work_pool_name=data.get("work_pool_name"),
            work_queue_name=data.get("work_queue_name"),
            parameters=data.get("parameters") or {},
            schedules=tuple(s.get("schedule") or {} for s in data.get("schedules") or ()),
            concurrency_limit=limit.get("limit") if limit else data.get("concurrency_limit"),
        )


@dataclass(frozen=True)
class TaskRun:
    id: str
    name: str
    task_key: str
    flow_run_id: str | None
    state_type: str | None
    state_name: str | None
    run_count: int
    start_time: datetime | None
    end_time: datetime | None
    tags: tuple[str, ...]

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> TaskRun:
        return cls(**run_fields(data), task_key=data.get("task_key", ""), flow_run_id=data.get("flow_run_id"))


@dataclass(frozen=True)
class Worker:
    name: str
    status: str
    last_heartbeat_time: datetime | None


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    occurred: datetime
    resource: Mapping[str, str]
    related: tuple[Mapping[str, str], ...]
    payload: Mapping[str, Any] = field(default_factory=dict)
    follows: str | None = None

    def related_id(self, role: str) -> str | None:
        for item in self.related:
            if item.get("prefect.resource.role") == role:
                return item.get("prefect.resource.id")
        return None


class PrefectREST(PlatformClient):
    """The platform's client plus the reads the tests check results with."""

    def __enter__(self) -> PrefectREST:
        return self

    def read_deployment(self, name: str) -> Deployment:
        """`flow/deployment`, or a bare deployment name when exactly one flow has a deployment of that name."""
        if "/" in name:
            return Deployment.from_api(self.request("GET", f"/deployments/{super().deployment_id(name)}").json())
        found = self.filter_deployments(names=[name])
        if len(found) != 1:
            raise LookupError(f"{len(found)} deployments named {name!r} on {self.api_url}; use flow/deployment")
        return found[0]

    def deployment_id(self, name: str) -> str:
        return super().deployment_id(name) if "/" in name else self.read_deployment(name).id

    def filter_deployments(
        self, names: Sequence[str] | None = None, tags_all: Sequence[str] | None = None
    ) -> list[Deployment]:
        criteria: dict[str, Any] = {}
        if names:
            criteria["name"] = {"any_": list(names)}
        if tags_all:
            criteria["tags"] = {"all_": list(tags_all)}
        out: list[Deployment] = []
        for page in self._pages("/deployments/filter", {"deployments": criteria} if criteria else {}):
            out.extend(Deployment.from_api(d) for d in page)
        return out

    def filter_flow_runs(
        self,
        flow_runs: Mapping[str, Any] | None = None,
        *,
        deployments: Mapping[str, Any] | None = None,
        sort: str = "ID_DESC",
        limit: int | None = None,
    ) -> list[FlowRun]:
        body: dict[str, Any] = {"sort": sort}
        if flow_runs:
            body["flow_runs"] = dict(flow_runs)
        if deployments:
            body["deployments"] = dict(deployments)
        out: list[FlowRun] = []
        for page in self._pages("/flow_runs/filter", body, limit=limit):
            out.extend(FlowRun.from_api(r) for r in page)
        return out[:limit] if limit else out

    def count_flow_runs(
        self, flow_runs: Mapping[str, Any] | None = None, *, deployments: Mapping[str, Any] | None = None
    ) -> int:
        body: dict[str, Any] = {}
        if flow_runs:
            body["flow_runs"] = dict(flow_runs)
        if deployments:
            body["deployments"] = dict(deployments)
        return int(self.request("POST", "/flow_runs/count", json=body).json())

    def flow_run_states(self, flow_run_id: str) -> list[Mapping[str, Any]]:
        states = self.request("GET", "/flow_run_states/", params={"flow_run_id": flow_run_id}).json()
        return sorted(states, key=lambda s: s["timestamp"])

    def task_runs_of(self, flow_run_ids: Sequence[str]) -> list[TaskRun]:
        body = {"flow_runs": {"id": {"any_": list(flow_run_ids)}}, "sort": "EXPECTED_START_TIME_ASC"}
        out: list[TaskRun] = []
        for page in self._pages("/task_runs/filter", body):
            out.extend(TaskRun.from_api(t) for t in page)
        return out

    def workers(self, pool: str) -> list[Worker]:
        response = self.request("POST", f"/work_pools/{pool}/workers/filter", json={"limit": PAGE}, ok=(200, 404))
        if response.status_code == 404:
            return []
        return [
            Worker(w["name"], w.get("status") or "OFFLINE", parse_time(w.get("last_heartbeat_time")))
            for w in response.json()
        ]

    def events(
        self,
        names: Sequence[str],
        *,
        since: datetime,
        resource_prefix: str | None = None,
        resource_ids: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events by name since a time, oldest first (follows the API's next_page links)."""
        flt: dict[str, Any] = {
            "occurred": {"since": iso(since), "until": iso(datetime.now(UTC) + timedelta(minutes=1))},
            "event": {"name": list(names)},
            "order": "ASC",
        }
        if resource_prefix or resource_ids:
            resource: dict[str, Any] = {}
            if resource_prefix:
                resource["id_prefix"] = [resource_prefix]
            if resource_ids:
                resource["id"] = list(resource_ids)
            flt["resource"] = resource
        data = self.request("POST", "/events/filter", json={"filter": flt, "limit": min(limit, 50)}).json()
        out = [_event(e) for e in data.get("events", [])]
        while data.get("next_page") and len(out) < limit:
            data = self._http.get(data["next_page"]).raise_for_status().json()
            out.extend(_event(e) for e in data.get("events", []))
        return out

    def _pages(self, path: str, body: Mapping[str, Any], limit: int | None = None) -> Iterator[list[Any]]:
        offset = 0
        while True:
            size = min(PAGE, limit - offset) if limit else PAGE
            page = self.request("POST", path, json={**body, "limit": size, "offset": offset}).json()
            yield page
            offset += len(page)
            if len(page) < size or (limit and offset >= limit):
                return


def _event(data: Mapping[str, Any]) -> Event:
    return Event(
        id=data["id"],
        event=data["event"],
        occurred=parse_time(data["occurred"]),  # type: ignore[arg-type]
        resource=data.get("resource") or {},
        related=tuple(data.get("related") or ()),
        payload=data.get("payload") or {},
        follows=data.get("follows"),
    )

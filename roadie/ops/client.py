"""A small typed client for the parts of Prefect's REST API that roadie's callers use.

This is what the platform's API does to start a job: look the deployment up by name, POST `create_flow_run`
with the parameters and an idempotency key, then poll the run's state. Only httpx: no Prefect import, so
it is quick to load and easy to port.

Idempotency keys are unique per *flow*, not per deployment, so every key roadie makes starts with the
deployment name (`media-ingest:{version_id}`). A repeat POST with a known key answers 200 with the run
that already exists (201 when it creates one); the caller reads that run's state instead of starting another.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

INGEST_DEPLOYMENT = "media-ingest/media-ingest"
FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
PAGE = 200  # the API's default maximum page size
# A busy server answers 503 (e.g. SQLite locked) or 429; the API's own client retries those too.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRIES = 5


def backoff_s(attempt: int) -> float:
    return min(10.0, 0.5 * 2**attempt) * (0.8 + 0.4 * random.random())  # noqa: S311 - jitter, not a secret


def retry_after_s(response: httpx.Response) -> float | None:
    try:
        return min(30.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


class PrefectAPIError(RuntimeError):
    def __init__(self, method: str, url: str, status: int, detail: str):
        super().__init__(f"{method} {url} -> {status}: {detail[:500]}")
        self.status = status


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def ingest_idempotency_key(version_id: str) -> str:
    return f"media-ingest:{version_id}"


def strip_resource_prefix(flow_run_id: str) -> str:
    """Accept `prefect.flow-run.<uuid>` (an event's resource id) as well as the bare id."""
    return flow_run_id.removeprefix("prefect.flow-run.")


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
class FlowRun:
    id: str
    name: str
    flow_id: str
    deployment_id: str | None
    parameters: Mapping[str, Any]
    tags: tuple[str, ...]
    state_type: str | None
    state_name: str | None
    state_message: str | None
    run_count: int
    start_time: datetime | None
    end_time: datetime | None
    expected_start_time: datetime | None
    total_run_time: float
    work_queue_name: str | None
    idempotency_key: str | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> FlowRun:
        state = data.get("state") or {}
        return cls(
            id=data["id"],
            name=data["name"],
            flow_id=data["flow_id"],
            deployment_id=data.get("deployment_id"),
            parameters=data.get("parameters") or {},
            tags=tuple(data.get("tags") or ()),
            state_type=state.get("type") or data.get("state_type"),
            state_name=state.get("name") or data.get("state_name"),
            state_message=state.get("message"),
            run_count=int(data.get("run_count") or 0),
            start_time=parse_time(data.get("start_time")),
            end_time=parse_time(data.get("end_time")),
            expected_start_time=parse_time(data.get("expected_start_time")),
            total_run_time=float(data.get("total_run_time") or 0.0),
            work_queue_name=data.get("work_queue_name"),
            idempotency_key=data.get("idempotency_key"),
        )

    @property
    def is_final(self) -> bool:
        return self.state_type in FINAL_STATE_TYPES


@dataclass(frozen=True)
class TriggeredRun:
    """The answer to a create_flow_run POST: the run, and whether this POST created it."""

    flow_run: FlowRun
    created: bool
    idempotency_key: str | None


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
        state = data.get("state") or {}
        return cls(
            id=data["id"],
            name=data["name"],
            task_key=data.get("task_key", ""),
            flow_run_id=data.get("flow_run_id"),
            state_type=state.get("type") or data.get("state_type"),
            state_name=state.get("name") or data.get("state_name"),
            run_count=int(data.get("run_count") or 0),
            start_time=parse_time(data.get("start_time")),
            end_time=parse_time(data.get("end_time")),
            tags=tuple(data.get("tags") or ()),
        )


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


class PrefectREST:
    """Synchronous, thread-safe (one httpx.Client) access to one Prefect API, e.g. http://host:4200/api."""

    def __init__(
        self,
        api_url: str,
        *,
        auth_string: str | None = None,
        timeout: float = 30.0,
        retries: int = RETRIES,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Accept": "application/json"}
        if auth_string:
            headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout, transport=transport)
        self._deployment_ids: dict[str, str] = {}
        self.retries = retries

    @classmethod
    def from_settings(cls, api_url: str | None = None, **kwargs: Any) -> PrefectREST:
        """The configured API (ROADIE_PREFECT_API_URL / PREFECT_API_URL), else the local server's URL."""
        from roadie.settings import get_settings

        url = api_url or get_settings().prefect_api_url
        if not url:
            from roadie.prefect_local import local_api_url

            url = local_api_url()
        return cls(url, auth_string=get_settings().prefect_api_auth_string, **kwargs)

    def __enter__(self) -> PrefectREST:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    # ------------------------------------------------------------------ plumbing

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: Sequence[int] = (200, 201, 204),
    ) -> httpx.Response:
        """One call; a busy server (429/502/503/504) or a refused connection is retried with backoff."""
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=json, params=params)
            except (httpx.ConnectError, httpx.ConnectTimeout):  # never sent: safe to send again
                if attempt == self.retries:
                    raise
                time.sleep(backoff_s(attempt))
                continue
            if response.status_code in RETRY_STATUSES and response.status_code not in ok and attempt < self.retries:
                time.sleep(retry_after_s(response) or backoff_s(attempt))
                continue
            break
        if response.status_code not in ok:
            raise PrefectAPIError(method, str(response.url), response.status_code, response.text)
        return response

    def health(self) -> bool:
        try:
            return self._http.get("/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------------ deployments

    def read_deployment(self, name: str) -> Deployment:
        """`flow/deployment`, or a bare deployment name when exactly one flow has a deployment of that name."""
        if "/" in name:
            flow, _, deployment = name.partition("/")
            response = self.request("GET", f"/deployments/name/{flow}/{deployment}", ok=(200, 404))
            if response.status_code == 404:
                raise LookupError(f"no deployment {name!r} on {self.api_url}; run `roadie setup` and deploy")
            return Deployment.from_api(response.json())
        found = self.filter_deployments(names=[name])
        if len(found) != 1:
            raise LookupError(f"{len(found)} deployments named {name!r} on {self.api_url}; use flow/deployment")
        return found[0]

    def deployment_id(self, name: str) -> str:
        if name not in self._deployment_ids:
            self._deployment_ids[name] = self.read_deployment(name).id
        return self._deployment_ids[name]

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

    # ------------------------------------------------------------------ flow runs

    def create_flow_run(
        self,
        deployment: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        tags: Sequence[str] | None = None,
        work_queue_name: str | None = None,
    ) -> TriggeredRun:
        """POST /deployments/{id}/create_flow_run. A known idempotency key returns the existing run."""
        body: dict[str, Any] = {"parameters": dict(parameters or {})}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if tags:
            body["tags"] = list(tags)
        if work_queue_name:
            body["work_queue_name"] = work_queue_name
        response = self.request("POST", f"/deployments/{self.deployment_id(deployment)}/create_flow_run", json=body)
        return TriggeredRun(FlowRun.from_api(response.json()), response.status_code == 201, idempotency_key)

    def trigger_ingest(self, version_id: str, formats: Sequence[str] | None = None) -> TriggeredRun:
        """Start media-ingest for a registered version, at most once per version."""
        parameters: dict[str, Any] = {"version_id": version_id}
        if formats:
            parameters["formats"] = list(formats)
        return self.create_flow_run(INGEST_DEPLOYMENT, parameters, idempotency_key=ingest_idempotency_key(version_id))

    def read_flow_run(self, flow_run_id: str) -> FlowRun:
        return FlowRun.from_api(self.request("GET", f"/flow_runs/{strip_resource_prefix(flow_run_id)}").json())

    def wait_for_flow_run(self, flow_run_id: str, timeout_s: float = 600, poll_s: float = 1.0) -> FlowRun:
        """Poll until the run is final; TimeoutError with the last state otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.read_flow_run(flow_run_id)
            if run.is_final:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run.name} ({run.id}) still {run.state_name} after {timeout_s:.0f} s")
            time.sleep(poll_s)

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

    # ------------------------------------------------------------------ workers, events

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

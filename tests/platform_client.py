"""The platform API's side of the contract, as its own service would write it: plain httpx, no roadie, no Prefect.

This is what the platform's API does to start a job (README, "Trigger from the platform's API"): look the deployment
up by `flow/deployment`, POST `create_flow_run` with the parameters and an idempotency key, then poll the run's
state until it is final. The black-box tests drive roadie through it, so the example stays true.

Idempotency keys are unique per *flow*, not per deployment, so every key roadie makes starts with the
deployment name (`media-ingest:{version_id}`). A repeat POST with a known key answers 200 with the run
that already exists (201 when it creates one); the caller reads that run's state instead of starting another.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

INGEST_DEPLOYMENT = "media-ingest/media-ingest"
FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
# A busy server answers 503 (e.g. SQLite locked) or 429; Prefect's own client retries those too.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRIES = 5


def backoff_s(attempt: int) -> float:
    return min(10.0, 0.5 * 2**attempt) * (0.8 + 0.4 * random.random())


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


def ingest_idempotency_key(version_id: str) -> str:
    return f"media-ingest:{version_id}"


def run_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields flow runs and task runs share, from the API's JSON: the state is nested in some answers and
    flat (state_type, state_name) in others."""
    state = data.get("state") or {}
    return {
        "id": data["id"],
        "name": data["name"],
        "tags": tuple(data.get("tags") or ()),
        "state_type": state.get("type") or data.get("state_type"),
        "state_name": state.get("name") or data.get("state_name"),
        "run_count": int(data.get("run_count") or 0),
        "start_time": parse_time(data.get("start_time")),
        "end_time": parse_time(data.get("end_time")),
    }


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
        return cls(
            **run_fields(data),
            flow_id=data["flow_id"],
            deployment_id=data.get("deployment_id"),
            parameters=data.get("parameters") or {},
            state_message=(data.get("state") or {}).get("message"),
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


class PlatformClient:
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

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

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

    def deployment_id(self, name: str) -> str:
        """The id of `flow/deployment` (looked up once, then cached)."""
        if name not in self._deployment_ids:
            flow, _, deployment = name.partition("/")
            response = self.request("GET", f"/deployments/name/{flow}/{deployment}", ok=(200, 404))
            if response.status_code == 404:
                raise LookupError(f"no deployment {name!r} on {self.api_url}; run `roadie setup` and deploy")
            self._deployment_ids[name] = response.json()["id"]
        return self._deployment_ids[name]

    def create_flow_run(
        self,
        deployment: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> TriggeredRun:
        """POST /deployments/{id}/create_flow_run. A known idempotency key returns the existing run."""
        body: dict[str, Any] = {"parameters": dict(parameters or {})}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        response = self.request("POST", f"/deployments/{self.deployment_id(deployment)}/create_flow_run", json=body)
        return TriggeredRun(FlowRun.from_api(response.json()), response.status_code == 201, idempotency_key)

    def trigger_ingest(self, version_id: str, formats: Sequence[str] | None = None) -> TriggeredRun:
        """Start media-ingest for a registered version, at most once per version."""
        parameters: dict[str, Any] = {"version_id": version_id}
        if formats:
            parameters["formats"] = list(formats)
        return self.create_flow_run(INGEST_DEPLOYMENT, parameters, idempotency_key=ingest_idempotency_key(version_id))

    def read_flow_run(self, flow_run_id: str) -> FlowRun:
        return FlowRun.from_api(self.request("GET", f"/flow_runs/{flow_run_id}").json())

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

"""roadie's own calls on the Prefect API (setup, serve, health, dead letters, the CLI's trigger), made with Prefect's
sync client: it speaks the server's schemas and retries a busy server itself (429/502/503, with Retry-After;
PREFECT_CLIENT_MAX_RETRIES). What is here is only what that client does not say on its own: which API to use,
whether a create_flow_run made the run, one-line errors, waiting for a final state.

The platform's side of the same API (plain httpx, as its own service would call it) is tests/platform_client.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

import httpx

from roadie.prefect_local import local_api_url
from roadie.settings import get_settings

# Prefect itself is imported in the functions that call it (each marked): the Docker health probe
# (roadie.ops.probe, every few seconds) imports this module for api_url alone, and Prefect costs ~1 s there. Prefect
# also reads PREFECT_API_URL and PREFECT_HOME once, at import: the CLI imports it only after ensure_api() set them.
if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.types import DateTime

INGEST_DEPLOYMENT = "media-ingest/media-ingest"
FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
PAGE = 200  # the API's default maximum page size

T = TypeVar("T")


def api_url(url: str | None = None) -> str:
    """`url`, else the configured API (ROADIE_PREFECT_API_URL / PREFECT_API_URL), else the local server's."""
    if url or get_settings().prefect_api_url:
        return url or get_settings().prefect_api_url or ""
    return local_api_url()


def connect(url: str | None = None, auth_string: str | None = None) -> SyncPrefectClient:
    """Prefect's sync client for `url` (see api_url) with the configured auth string; enter it before use."""
    # deferred: Prefect (see the top of the module)
    from prefect.client.orchestration import SyncPrefectClient  # noqa: PLC0415

    return SyncPrefectClient(api_url(url), auth_string=auth_string or get_settings().prefect_api_auth_string)


def ui_url(client: SyncPrefectClient) -> str:
    return str(client.api_url).rstrip("/").removesuffix("/api")


def describe_error(exc: BaseException) -> str:
    """One line: `POST <url> -> 409: <the server's detail>` for an error answer (Prefect's own message spans lines
    and repeats the body), the message otherwise. Not redacted: pass it through roadie.errors.redact."""
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text
        return f"{exc.request.method} {exc.request.url} -> {response.status_code}: {str(detail)[:500]}"
    return str(exc) or type(exc).__name__


def all_pages(read: Callable[[int, int], list[T]], page: int = PAGE) -> list[T]:
    """Every item of a paged read, `read(limit, offset)`."""
    out: list[T] = []
    while True:
        batch = read(page, len(out))
        out.extend(batch)
        if len(batch) < page:
            return out


def state_type(run: Any) -> str | None:
    """A flow or task run's state type as the API spells it (`COMPLETED`), or None."""
    return run.state_type.value if run.state_type is not None else None


def plain_time(moment: datetime | None) -> datetime | None:
    """Prefect's DateTime (a pendulum subclass) as a plain aware datetime, fit for the database and pickling."""
    return None if moment is None else datetime.fromtimestamp(moment.timestamp(), UTC)


def api_time(moment: datetime) -> DateTime:
    """An aware datetime for a filter's time field: its model makes it Prefect's DateTime (only mypy needs this)."""
    return cast("DateTime", moment)


def read_deployment(client: SyncPrefectClient, name: str) -> DeploymentResponse:
    """`flow/deployment`, or a bare deployment name when exactly one flow has a deployment of that name."""
    # deferred: Prefect (see the top of the module)
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName  # noqa: PLC0415
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415

    where = str(client.api_url).rstrip("/")
    if "/" in name:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise LookupError(f"no deployment {name!r} on {where}; run `roadie setup` and deploy") from None
    found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
    if len(found) != 1:
        raise LookupError(f"{len(found)} deployments named {name!r} on {where}; use flow/deployment")
    return found[0]


def create_run(
    client: SyncPrefectClient,
    deployment_id: UUID,
    parameters: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
) -> tuple[FlowRun, bool]:
    """POST create_flow_run on Prefect's client, and whether this call made the run: a known idempotency key is
    answered 200 with the run that exists (201 when it creates one), which create_flow_run_from_deployment does not
    tell its caller."""
    # deferred: Prefect (see the top of the module)
    from prefect.client.schemas.actions import DeploymentFlowRunCreate  # noqa: PLC0415
    from prefect.client.schemas.objects import FlowRun  # noqa: PLC0415

    body = DeploymentFlowRunCreate(parameters=dict(parameters or {}), idempotency_key=idempotency_key)
    response = client.request(
        "POST",
        "/deployments/{id}/create_flow_run",
        path_params={"id": deployment_id},
        json=body.model_dump(mode="json", exclude_unset=True),
    )
    return FlowRun.model_validate(response.json()), response.status_code == 201


def ingest_idempotency_key(version_id: str) -> str:
    """Keys are unique per flow, not per deployment: every key roadie makes starts with the deployment's name."""
    return f"media-ingest:{version_id}"


def trigger_ingest(
    client: SyncPrefectClient, version_id: str, formats: Sequence[str] | None = None
) -> tuple[FlowRun, bool]:
    """Start media-ingest for a registered version, at most once per version."""
    parameters: dict[str, Any] = {"version_id": version_id}
    if formats:
        parameters["formats"] = list(formats)
    deployment = read_deployment(client, INGEST_DEPLOYMENT)
    return create_run(client, deployment.id, parameters, idempotency_key=ingest_idempotency_key(version_id))


def wait_for_flow_run(client: SyncPrefectClient, flow_run_id: UUID, timeout_s: float, poll_s: float = 1.0) -> FlowRun:
    """Poll until the run is final; TimeoutError with the last state otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.read_flow_run(flow_run_id)
        if state_type(run) in FINAL_STATE_TYPES:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run.name} ({run.id}) still {run.state_name} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def close_parameter_schemas(client: SyncPrefectClient, deployment_names: Sequence[str]) -> list[str]:
    """Mark the parameter schema of these deployments `additionalProperties: false`, so the server answers a
    `create_flow_run` with an unknown field 409 ("Additional properties are not allowed ('x' was unexpected)").

    Prefect builds the schema from the flow's signature but never closes it, and a run that does get an unknown
    field crashes in the engine (SignatureMismatchError, "Process exited with status code: 1") before the flow
    can fail it cleanly. `roadie setup --deploy` and `roadie serve` call this after `prefect deploy`. Returns the
    ids of the deployments it changed."""
    # deferred: Prefect (see the top of the module)
    from prefect.client.schemas.actions import DeploymentUpdate  # noqa: PLC0415
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName  # noqa: PLC0415

    changed = []
    named = DeploymentFilter(name=DeploymentFilterName(any_=list(deployment_names)))
    found = all_pages(
        lambda limit, offset: client.read_deployments(deployment_filter=named, limit=limit, offset=offset)
    )
    for deployment in found:
        schema = deployment.parameter_openapi_schema
        if not isinstance(schema, dict) or schema.get("additionalProperties") is False:
            continue
        client.update_deployment(
            deployment.id, DeploymentUpdate(parameter_openapi_schema={**schema, "additionalProperties": False})
        )
        changed.append(str(deployment.id))
    return changed

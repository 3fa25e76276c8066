"""Operating roadie on Prefect: setup, serve, health, failed, trigger, register.

Each command imports what it needs in its own body (each such import marked `noqa: PLC0415`, with what it costs):
`roadie --help` imports none of it, not even the settings (pydantic-settings), and starts in ~0.25 s
(tests/test_cli_startup.py). Prefect is imported only after ensure_api(), where a command calls it: Prefect reads
PREFECT_API_URL and PREFECT_HOME once, at import."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import typer

from roadie.cli.app import app, emit_json, fail, say
from roadie.cli.media import prepare_database
from roadie.ops.signals import stop_on_signals

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

trigger_app = typer.Typer(
    help="Start a deployed job over Prefect's REST API (what the platform's API does).", no_args_is_help=True
)
app.add_typer(trigger_app, name="trigger")


def _client(api_url: str | None = None) -> SyncPrefectClient:
    """Prefect's sync client for the configured API (or the local server); use it in a `with`."""
    from roadie.prefect_api import connect  # noqa: PLC0415  (deferred: settings, httpx, then Prefect)

    return connect(api_url)


def _api_failure(exc: Exception) -> typer.Exit:
    """A lookup or an API answer that refused the call: one line, without a secret (exit 2)."""
    # deferred: settings, httpx
    from roadie.errors import redact  # noqa: PLC0415
    from roadie.prefect_api import describe_error  # noqa: PLC0415

    return fail(redact(describe_error(exc)))


def _wait_and_exit(client: SyncPrefectClient, run_id: UUID, timeout: float) -> None:
    """--wait: poll until the run is final, print it, exit 0 only when it completed."""
    from roadie.prefect_api import state_type, wait_for_flow_run  # noqa: PLC0415  (deferred: settings, httpx)

    final = wait_for_flow_run(client, run_id, timeout_s=timeout)
    message = final.state.message if final.state else None
    emit_json({"flow_run_id": str(final.id), "name": final.name, "state": final.state_name, "message": message})
    raise typer.Exit(0 if state_type(final) == "COMPLETED" else 1)


def _start_run(start: Callable[[Any], tuple[Any, bool]], wait: bool, timeout: float, **about: str) -> None:
    """Create a flow run with `start(client)` (the run and whether this call created it), print it with `about`
    beside and its UI link, and --wait: poll until it is final, exit 0 only when it completed."""
    # deferred: httpx, settings
    import httpx  # noqa: PLC0415

    from roadie.prefect_api import ui_url  # noqa: PLC0415

    with _client() as client:
        try:
            run, created = start(client)
        except (LookupError, httpx.HTTPError) as exc:
            raise _api_failure(exc) from None
        ui = f"{ui_url(client)}/runs/flow-run/{run.id}"
        emit_json({"flow_run_id": str(run.id), "created": created, "state": run.state_name, **about, "ui": ui})
        if wait:
            _wait_and_exit(client, run.id, timeout)


@app.command()
def setup(
    docker: bool = typer.Option(True, help="Also create the roadie-docker pool (production)."),
    deploy: bool = typer.Option(False, "--deploy", help="Then deploy prefect.yaml (every flow that exists)."),
    prefect_file: Path | None = typer.Option(
        None,
        "--prefect-file",
        help="Deploy this file instead, e.g. deployments/prefect.docker.yaml (relative to the project).",
    ),
    db: bool = typer.Option(True, help="Also migrate ROADIE_DATABASE_URL (failed_jobs lives there)."),
    api_url: str | None = typer.Option(None, help="Prefect API (default: configured, else the local server)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create pools, prioritised work queues, global limits and crash detection. Safe to run again."""
    from roadie.prefect_local import ensure_api  # noqa: PLC0415  (deferred: settings, httpx)

    url = api_url or ensure_api()
    # deferred: Prefect, and only now that ensure_api() has pointed it at the server (see the top)
    from deployments.topology import ensure_topology  # noqa: PLC0415

    if db:
        from roadie.db.session import upgrade  # noqa: PLC0415  (deferred: SQLAlchemy and Alembic, only with --db)

        upgrade()
    with _client(url) as client:
        done = ensure_topology(client, docker=docker)
    if deploy:
        # deferred: psutil, PyYAML and SQLAlchemy, only with --deploy
        from roadie.ops.serve import deploy as run_deploy  # noqa: PLC0415
        from roadie.ops.serve import project_root  # noqa: PLC0415

        root = project_root()
        result = run_deploy(url, prefect_file=root / prefect_file if prefect_file else None, root=root)
        done.update(deployed=list(result.deployed), not_deployed=list(result.missing))
    if as_json:
        emit_json(done)
        return
    say(f"pools: {', '.join(done['pools'])}; queues: {', '.join(done['queues'])}; limits: {', '.join(done['limits'])}")
    say(f"runs without a heartbeat for {done['zombie_after_seconds']} s are marked Crashed")
    if deploy:
        say(f"deployed: {', '.join(done['deployed'])}")
        if done["not_deployed"]:
            say(f"not deployed (flow module missing): {', '.join(done['not_deployed'])}")


@app.command()
def serve(
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Process workers to start."),
    limit: int | None = typer.Option(None, help="Flow runs at once per worker (default: no limit)."),
    port: int | None = typer.Option(None, help="Health/metrics port (default ROADIE_HEALTH_PORT, 3001)."),
    health: bool = typer.Option(True, help="Serve /health and /metrics."),
    grace: float = typer.Option(60.0, help="Seconds runs in flight get to finish after Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print the URLs as one JSON line once ready."),
) -> None:
    """Everything on one machine: a Prefect server (unless one is configured), setup, deployments, N workers
    and the health endpoint. Ctrl-C stops all of it."""
    # deferred: psutil, PyYAML, SQLAlchemy, settings
    from roadie.ops.serve import serve as run_serve  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    run_serve(
        workers=workers,
        port=port if port is not None else get_settings().health_port,
        limit=limit,
        grace_s=grace,
        health=health,
        say=say,
        ready=emit_json if as_json else None,
    )


@app.command()
def health(
    serve_http: bool = typer.Option(False, "--serve", help="Serve GET /health and /metrics until interrupted."),
    port: int | None = typer.Option(None, help="Port for --serve (default ROADIE_HEALTH_PORT, 3001)."),
    host: str | None = typer.Option(None, help="Address for --serve (default ROADIE_HEALTH_HOST)."),
    api_url: str | None = typer.Option(None),
) -> None:
    """Print the health report as JSON (exit 1 when unhealthy), or serve it with the Prometheus metrics."""
    # deferred: settings; Prefect and prometheus_client (roadie.ops.health, roadie.ops.health_server)
    from roadie.errors import mask_url  # noqa: PLC0415
    from roadie.ops.health import check_health  # noqa: PLC0415
    from roadie.ops.health_server import OpsServer  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    with _client(api_url) as client:
        if serve_http:
            server = OpsServer(client, host or settings.health_host, port if port is not None else settings.health_port)
            say(
                f"serving http://{host or settings.health_host}:{server.port}/health and /metrics "
                f"from {mask_url(str(client.api_url))}"
            )
            try:
                with stop_on_signals():  # Ctrl-C or `docker stop`, also when started in the background
                    server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                server.httpd.server_close()
            return
        report = check_health(client, settings)
    emit_json(report.as_json())
    raise typer.Exit(0 if report.healthy else 1)


@app.command()
def failed(
    retry: str | None = typer.Option(
        None,
        "--retry",
        help="Re-queue this failed job (id, flow run id, or a unique prefix of either) with its original parameters.",
    ),
    sync: bool = typer.Option(
        False, "--sync", help="First file failed/crashed runs of the last day that the automation missed."
    ),
    limit: int = typer.Option(50, help="How many to list."),
    pending: bool = typer.Option(False, "--pending", help="Only jobs not retried yet."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List jobs that failed for good (newest first), or re-queue one."""
    from tasks.failures import dead_letter  # noqa: PLC0415  (deferred: Prefect, SQLAlchemy)

    if sync or retry:
        with _client() as client:
            if sync:
                added = dead_letter.sweep(client)
                say(f"filed {len(added)} missed failed run(s)")
            if retry:
                try:
                    job, run_id, created = dead_letter.retry(client, retry)
                except (LookupError, ValueError) as exc:
                    raise fail(str(exc)) from None
                out = {
                    "failed_job_id": str(job.id),
                    "deployment": job.deployment_name,
                    "flow_run_id": run_id,
                    "created": created,
                    "parameters": job.parameters,
                }
                if as_json:
                    emit_json(out)
                else:
                    say(
                        f"{'re-queued' if created else 'already re-queued'} {job.deployment_name} "
                        f"{json.dumps(job.parameters)} as flow run {run_id}"
                    )
                return
    rows = dead_letter.list_failed(limit=limit, include_retried=not pending)
    if as_json:
        for row in rows:
            emit_json(
                {
                    "id": str(row.id),
                    "flow": row.flow_name,
                    "deployment": row.deployment_name,
                    "flow_run_id": str(row.flow_run_id),
                    "flow_run_name": row.flow_run_name,
                    "parameters": row.parameters,
                    "state": row.state,
                    "error": row.error,
                    "attempts": row.attempts,
                    "failed_at": row.failed_at.isoformat(),
                    "retried_at": row.retried_at.isoformat() if row.retried_at else None,
                    "retry_flow_run_id": str(row.retry_flow_run_id) if row.retry_flow_run_id else None,
                }
            )
        return
    if not rows:
        say("no failed jobs")
    for row in rows:
        retried = f"  retried -> {row.retry_flow_run_id}" if row.retried_at else ""
        say(
            f"{str(row.id)[:8]}  {row.failed_at:%Y-%m-%d %H:%M}  {row.deployment_name or row.flow_name:<17} "
            f"{row.state:<8} x{row.attempts}  {row.flow_run_name}{retried}"
        )
        say(f"          {row.error[:200]}")


@trigger_app.command("ingest")
def trigger_ingest(
    version_id: str = typer.Option(..., "--version-id", help="A version registered by the API or `roadie register`."),
    formats: str | None = typer.Option(None, help="Comma-separated renditions, primary first."),
    wait: bool = typer.Option(False, "--wait", help="Poll until the run is final; exit 1 unless Completed."),
    timeout: float = typer.Option(900.0, help="Seconds --wait waits."),
) -> None:
    """POST create_flow_run on media-ingest with idempotency key media-ingest:{version_id}; prints the run."""
    # deferred: settings, httpx
    from roadie.prefect_api import ingest_idempotency_key  # noqa: PLC0415
    from roadie.prefect_api import trigger_ingest as start_ingest  # noqa: PLC0415

    wanted = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
    _start_run(
        lambda client: start_ingest(client, version_id, wanted),
        wait,
        timeout,
        idempotency_key=ingest_idempotency_key(version_id),
    )


@trigger_app.command("job")
def trigger_job(
    deployment: str = typer.Argument(..., help="Deployment name (e.g. waveform, analytics-rollup) or flow/name."),
    params: str = typer.Option("{}", "--params", help='Parameters as JSON, e.g. \'{"version_id": "…"}\'.'),
    key: str | None = typer.Option(
        None,
        "--key",
        help="Idempotency key; it should start with the deployment "
        "name (keys are unique per flow, not per deployment).",
    ),
    wait: bool = typer.Option(False, "--wait"),
    timeout: float = typer.Option(900.0),
) -> None:
    """Start any roadie deployment with parameters (reprocessing one version, a rollup backfill …)."""
    from roadie.prefect_api import create_run, read_deployment  # noqa: PLC0415  (deferred: settings, httpx)

    try:
        parameters = json.loads(params)
    except json.JSONDecodeError as exc:
        raise fail(f"--params is not JSON: {exc}") from None
    _start_run(
        lambda client: create_run(client, read_deployment(client, deployment).id, parameters, idempotency_key=key),
        wait,
        timeout,
    )


@app.command()
def register(
    path: Path = typer.Argument(..., help="The uploaded audio file."),
    owner: str | None = typer.Option(None, help="Username of the owning artist (created if new)."),
    title: str | None = typer.Option(None, help="Track title (default: the file name)."),
    lossless: bool = typer.Option(False, help="Whitelist the owner for hls_alac."),
    as_json: bool = typer.Option(False, "--json", help='Print {"version_id", "asset_key"}.'),
) -> None:
    """What the API does before it triggers media-ingest: store the original, create the asset, track and
    version rows (`pending`). Runs no flow."""
    # deferred: SQLAlchemy, settings
    from roadie.catalog.registration import register_upload  # noqa: PLC0415
    from roadie.errors import InvalidInput  # noqa: PLC0415

    prepare_database()
    try:
        reg = register_upload(path, title=title, owner=owner, lossless=lossless)
    except InvalidInput as exc:
        raise fail(str(exc)) from None
    if as_json:
        emit_json({"version_id": reg.version_id, "asset_key": reg.asset_key})
    else:
        say(
            f"registered version {reg.version_id} ({reg.asset_key}); start it with "
            f"`roadie trigger ingest --version-id {reg.version_id}`"
        )

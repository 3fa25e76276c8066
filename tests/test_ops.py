"""Operations pieces against a real Prefect server and real PostgreSQL: the platform's REST client, the topology
setup, dead letters, health and Prometheus metrics, the register CLI. (The whole system with workers: test_e2e.py.)

roadie's side talks to the server through Prefect's own client (`prefect`); the tests set up and check runs from
outside over REST (`client`, tests/prefect_rest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from roadie.ops.health import check_health
from roadie.ops.health_server import OpsServer
from roadie.ops.metrics import DURATION_BUCKETS, JobMetrics
from roadie.params import flow_run_uuid
from roadie.prefect_api import connect
from roadie.settings import Settings, reload_settings
from tasks.failures import dead_letter
from tests.ops_support import Recorder, make_deployment, set_state, unique
from tests.platform_client import PrefectAPIError
from tests.prefect_rest import PrefectREST
from tests.support import sine, write_wav

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

TEST_POOL = "roadie-test-pool"


# ---------------------------------------------------------------------- helpers


@pytest.fixture
def client(prefect_api: str) -> Iterator[PrefectREST]:
    with PrefectREST(prefect_api) as c:
        yield c


@pytest.fixture
def prefect(prefect_api: str) -> Iterator[SyncPrefectClient]:
    with connect(prefect_api) as c:
        yield c


@pytest.fixture
def ops_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROADIE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROADIE_DATABASE_URL", pg_url)
    monkeypatch.setenv("ROADIE_STORAGE_URL", (tmp_path / "storage").as_uri())
    settings = reload_settings()
    yield settings
    reload_settings()


# ---------------------------------------------------------------------- REST client


def test_client_looks_up_deployments_and_creates_runs_once_per_key(client):
    flow, name = unique("roadie-test-flow"), unique("job")
    dep_id = make_deployment(client, flow, name, ["roadie-test"])
    assert client.read_deployment(f"{flow}/{name}").id == dep_id
    assert client.deployment_id(name) == dep_id  # a bare name is enough when it is unique

    key = f"{name}:{uuid.uuid4()}"
    first = client.create_flow_run(f"{flow}/{name}", {"x": 1}, idempotency_key=key)
    again = client.create_flow_run(f"{flow}/{name}", {"x": 1}, idempotency_key=key)
    other = client.create_flow_run(f"{flow}/{name}", {"x": 1})
    assert first.created and not again.created
    assert again.flow_run.id == first.flow_run.id
    assert other.created and other.flow_run.id != first.flow_run.id
    assert client.read_flow_run(first.flow_run.id).parameters == {"x": 1}
    # roadie's side takes a run id as an event's resource id too (what the dead-letter automation passes).
    assert flow_run_uuid(f"prefect.flow-run.{first.flow_run.id}") == uuid.UUID(first.flow_run.id)
    runs = client.filter_flow_runs(deployments={"id": {"any_": [dep_id]}})
    assert sorted(r.id for r in runs) == sorted([first.flow_run.id, other.flow_run.id])

    with pytest.raises(LookupError):
        client.read_deployment(f"{flow}/no-such-deployment")
    with pytest.raises(LookupError):
        client.deployment_id(unique("no-such-deployment"))


def test_client_waits_for_a_final_state(client):
    flow, name = unique("roadie-test-flow"), unique("job")
    make_deployment(client, flow, name, [])
    run = client.create_flow_run(f"{flow}/{name}").flow_run

    def finish() -> None:
        time.sleep(0.5)
        set_state(client, run.id, "RUNNING")
        time.sleep(0.5)
        set_state(client, run.id, "COMPLETED")

    threading.Thread(target=finish).start()
    final = client.wait_for_flow_run(run.id, timeout_s=30, poll_s=0.2)
    assert final.state_type == "COMPLETED" and final.is_final
    states = [s["type"] for s in client.flow_run_states(run.id)]
    assert states[-2:] == ["RUNNING", "COMPLETED"]

    pending = client.create_flow_run(f"{flow}/{name}").flow_run
    with pytest.raises(TimeoutError):
        client.wait_for_flow_run(pending.id, timeout_s=0.5, poll_s=0.1)


def test_client_retries_a_busy_server_then_gives_up():
    busy = Recorder([503, 429])
    try:
        with PrefectREST(busy.url, retries=2) as c:
            assert c.request("GET", "/health").status_code == 200
            assert len(busy.requests) == 3
            busy.statuses = [503, 503, 503]
            with pytest.raises(PrefectAPIError) as err:
                c.request("GET", "/health")
            assert err.value.status == 503
    finally:
        busy.close()


def test_client_sends_the_auth_string_as_basic_auth():
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with PrefectREST(f"http://127.0.0.1:{httpd.server_address[1]}", auth_string="ops:secret") as c:
            c.request("GET", "/x")
    finally:
        httpd.shutdown()
        httpd.server_close()
    import base64

    assert seen == ["Basic " + base64.b64encode(b"ops:secret").decode()]


# ---------------------------------------------------------------------- topology


def test_setup_is_idempotent_and_orders_queues(client, prefect):
    from deployments.topology import DOCKER_POOL, PROCESS_POOL, QUEUES, ZOMBIE_AUTOMATION, ensure_topology

    first = ensure_topology(prefect, zombie_after_seconds=75)
    second = ensure_topology(prefect, zombie_after_seconds=75)
    assert second["created_pools"] == [] and first["zombie_automation"] == second["zombie_automation"]
    for pool, pool_type in ((PROCESS_POOL, "process"), (DOCKER_POOL, "docker")):
        info = client.request("GET", f"/work_pools/{pool}").json()
        assert info["type"] == pool_type
        queues = client.request("POST", f"/work_pools/{pool}/queues/filter", json={}).json()
        priority = {q["name"]: q["priority"] for q in queues}
        assert priority["ingest"] < priority["ops"] < priority["analysis"] < priority["batch"]
        assert [priority[q.name] for q in QUEUES] == [q.priority for q in QUEUES]
    docker_vars = client.request("GET", f"/work_pools/{DOCKER_POOL}").json()["base_job_template"]["variables"]
    assert {"image", "env", "networks"} <= set(docker_vars["properties"])

    limits = {
        name: client.request("GET", f"/v2/concurrency_limits/{name}").json()
        for name in ("transcode", "transcode-rate", "db-batch")
    }
    assert limits["transcode"]["limit"] == 2
    assert limits["transcode-rate"]["limit"] == 10
    assert limits["transcode-rate"]["slot_decay_per_second"] == pytest.approx(10 / 60)
    assert limits["db-batch"]["limit"] == 2

    found = client.request(
        "POST", "/automations/filter", json={"automations": {"name": {"any_": [ZOMBIE_AUTOMATION]}}}
    ).json()
    assert len(found) == 1
    trigger = found[0]["trigger"]
    assert trigger["posture"] == "Proactive" and trigger["within"] == 75
    assert trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert found[0]["actions"][0]["state"] == "CRASHED"


# ---------------------------------------------------------------------- dead letters


@pytest.fixture(scope="module")
def failing_flows():
    from prefect import flow, task

    from roadie.errors import InvalidInput, TransientError

    @task(retries=2, retry_delay_seconds=0)
    def flaky() -> None:
        raise TransientError("storage unavailable")

    @flow(name="roadie-test-bad-input")
    def bad_input(version_id: str) -> None:
        raise InvalidInput(f"version {version_id} is not audio")

    @flow(name="roadie-test-flaky")
    def retried(version_id: str) -> None:
        flaky()

    return bad_input, retried


def run_to_failure(flow_fn, **params) -> str:
    state = flow_fn(**params, return_state=True)
    assert state.is_failed()
    return str(state.state_details.flow_run_id)


def test_failed_run_is_recorded_once_with_error_and_attempts(prefect, ops_env, failing_flows, pg_url):
    bad_input, retried = failing_flows
    run_id = run_to_failure(bad_input, version_id="v-1")
    failed = dead_letter.describe_failed_run(prefect, f"prefect.flow-run.{run_id}")
    assert failed.flow_name == "roadie-test-bad-input" and failed.deployment_name is None
    assert failed.parameters == {"version_id": "v-1"}
    assert failed.state == "Failed" and "version v-1 is not audio" in failed.error
    assert failed.attempts == 1

    letter = dead_letter.record(failed)
    again = dead_letter.record(failed)
    assert letter.first_time and not again.first_time and again.id == letter.id
    with sa.create_engine(pg_url).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT flow_name, state, error, attempts, parameters FROM failed_jobs WHERE flow_run_id = :id"),
            {"id": run_id},
        ).all()
    assert len(rows) == 1
    assert rows[0].flow_name == "roadie-test-bad-input" and rows[0].attempts == 1
    assert rows[0].parameters == {"version_id": "v-1"}

    # Three tries of a transient failure: attempts says the retries ran out.
    flaky_run = run_to_failure(retried, version_id="v-2")
    assert dead_letter.describe_failed_run(prefect, flaky_run).attempts == 3


def test_only_failed_or_crashed_runs_are_dead_letters(client, prefect):
    flow, name = unique("roadie-test-flow"), unique("job")
    make_deployment(client, flow, name, [])
    run = client.create_flow_run(f"{flow}/{name}").flow_run
    set_state(client, run.id, "RUNNING")
    set_state(client, run.id, "COMPLETED")
    with pytest.raises(ValueError, match="not failed or crashed"):
        dead_letter.describe_failed_run(prefect, run.id)


def test_crashed_ingest_fails_its_stranded_version(ops_env, tmp_path, pg_url):
    from roadie.catalog.registration import register_upload

    wav = write_wav(tmp_path / "take.wav", sine(440, 1.0, 44100), 44100)
    stranded = register_upload(wav, title="stranded")
    ready = register_upload(wav, title="ready")
    with sa.create_engine(pg_url).begin() as conn:
        conn.execute(
            sa.text("UPDATE track_versions SET status = 'processing' WHERE id = :id"), {"id": stranded.version_id}
        )
        conn.execute(sa.text("UPDATE track_versions SET status = 'ready' WHERE id = :id"), {"id": ready.version_id})

    def crashed(version_id: str) -> dead_letter.FailedRun:
        return dead_letter.FailedRun(
            str(uuid.uuid4()),
            f"ingest-{version_id}",
            "media-ingest",
            "media-ingest",
            {"version_id": version_id},
            "Crashed",
            "no heartbeat for 90 s",
            1,
            datetime.now(UTC),
        )

    dead_letter.record(crashed(stranded.version_id))
    dead_letter.record(crashed(ready.version_id))
    dead_letter.record(crashed("not-a-uuid"))  # a bad-input run: nothing to mark
    with sa.create_engine(pg_url).connect() as conn:
        status = dict(
            conn.execute(
                sa.text("SELECT id::text, status FROM track_versions WHERE id IN (:a, :b)"),
                {"a": stranded.version_id, "b": ready.version_id},
            ).all()
        )
        error = conn.execute(
            sa.text("SELECT error FROM track_versions WHERE id = :a"), {"a": stranded.version_id}
        ).scalar_one()
    assert status == {stranded.version_id: "failed", ready.version_id: "ready"}
    assert "ended Crashed" in error and "roadie failed --retry" in error


def test_webhook_gets_the_failed_job_and_errors_raise():
    hook = Recorder([200, 500])
    try:
        failed = dead_letter.FailedRun(
            str(uuid.uuid4()),
            "ingest-x",
            "media-ingest",
            "media-ingest",
            {"version_id": "x"},
            "Failed",
            "boom",
            4,
            datetime.now(UTC),
        )
        letter = dead_letter.DeadLetter(str(uuid.uuid4()), failed, True)
        assert dead_letter.notify_webhook(letter, f"{hook.url}/hook") == 200
        path, body = hook.requests[0]
        assert path == "/hook"
        assert body["failed_job_id"] == letter.id and body["deployment"] == "media-ingest"
        assert body["attempts"] == 4 and body["error"] == "boom" and body["parameters"] == {"version_id": "x"}
        assert "roadie failed --retry" in body["text"]
        with pytest.raises(dead_letter.WebhookError, match="answered 500"):
            dead_letter.notify_webhook(letter, f"{hook.url}/hook")
    finally:
        hook.close()


def test_dead_letter_event_reaches_the_api(client, prefect, ops_env, failing_flows):
    bad_input, _ = failing_flows
    run_id = run_to_failure(bad_input, version_id="v-event")
    letter = dead_letter.record(dead_letter.describe_failed_run(prefect, run_id))
    since = datetime.now(UTC) - timedelta(minutes=1)
    dead_letter.emit(letter)
    deadline = time.monotonic() + 30
    events = []
    while not events and time.monotonic() < deadline:
        time.sleep(0.5)
        events = client.events([dead_letter.EVENT_NAME], since=since, resource_ids=[f"roadie.failed-job.{letter.id}"])
    assert len(events) == 1
    assert events[0].related_id("flow-run") == f"prefect.flow-run.{run_id}"
    assert events[0].payload["error"] == letter.failed.error


def test_retry_requeues_a_failed_job_once(client, prefect, ops_env, failing_flows):
    bad_input, _ = failing_flows
    run_id = run_to_failure(bad_input, version_id="v-retry")
    dep_name = unique("bad-input")
    make_deployment(client, "roadie-test-bad-input", dep_name, ["roadie-job"])
    failed = dead_letter.describe_failed_run(prefect, run_id)
    letter = dead_letter.record(dead_letter.FailedRun(**{**failed.__dict__, "deployment_name": dep_name}))

    job, new_run, created = dead_letter.retry(prefect, letter.id[:8])
    _job_again, same_run, created_again = dead_letter.retry(prefect, run_id)  # by flow run id too
    assert created and not created_again and same_run == new_run
    assert job.retried_at is not None and str(job.retry_flow_run_id) == new_run
    requeued = client.read_flow_run(new_run)
    assert requeued.parameters == {"version_id": "v-retry"} and requeued.state_type == "SCHEDULED"
    assert requeued.idempotency_key == f"{dep_name}:retry:{letter.id}"
    with pytest.raises(LookupError):
        dead_letter.find_failed(str(uuid.uuid4()))

    cli = subprocess.run(
        [sys.executable, "-m", "roadie", "failed", "--json", "--limit", "500"],
        capture_output=True,
        text=True,
        env=_cli_env(client.api_url),
    )
    assert cli.returncode == 0, cli.stderr
    listed = {row["id"]: row for row in map(json.loads, cli.stdout.splitlines())}
    assert listed[letter.id]["retry_flow_run_id"] == new_run and listed[letter.id]["state"] == "Failed"


def test_sweep_files_failed_job_runs_the_automation_missed(client, prefect, ops_env):
    flow, name = unique("roadie-test-flow"), unique("job")
    make_deployment(client, flow, name, ["roadie-job"])
    run = client.create_flow_run(f"{flow}/{name}", {"n": 1}).flow_run
    set_state(client, run.id, "RUNNING")
    set_state(client, run.id, "CRASHED", "worker vanished")
    filed = dead_letter.sweep(prefect)
    mine = [letter for letter in filed if letter.failed.flow_run_id == run.id]
    assert len(mine) == 1 and mine[0].failed.state == "Crashed" and mine[0].failed.error == "worker vanished"
    assert mine[0].failed.deployment_name == name
    assert all(letter.failed.flow_run_id != run.id for letter in dead_letter.sweep(prefect))


# ---------------------------------------------------------------------- health and metrics


@pytest.fixture
def worker_pool(client) -> str:
    """A pool with one worker that has just sent its heartbeat (the API the workers use)."""
    from deployments.topology import default_job_template

    pool = unique(TEST_POOL)
    client.request(
        "POST",
        "/work_pools/",
        json={"name": pool, "type": "process", "base_job_template": default_job_template("process")},
    )
    client.request(
        "POST", f"/work_pools/{pool}/workers/heartbeat", json={"name": "w1", "heartbeat_interval_seconds": 30}
    )
    return pool


def job_runs(client: PrefectREST, flow: str, name: str) -> dict[str, list[str]]:
    """One deployment tagged roadie-job with runs in every interesting state."""
    make_deployment(client, flow, name, ["roadie", "roadie-job"])
    ids: dict[str, list[str]] = {}

    def run(final: list[str]) -> None:
        r = client.create_flow_run(f"{flow}/{name}").flow_run
        for state in final:
            set_state(client, r.id, state)
        ids.setdefault(final[-1] if final else "SCHEDULED", []).append(r.id)

    run([])  # due now: waiting
    run(["PENDING"])  # waiting
    run(["PENDING", "RUNNING"])  # active
    run(["PENDING", "RUNNING", "COMPLETED"])
    run(["PENDING", "RUNNING", "FAILED"])
    run(["PENDING", "RUNNING", "CRASHED"])
    run(["PENDING", "CANCELLED"])
    future = client.request(
        "POST",
        f"/deployments/{client.deployment_id(f'{flow}/{name}')}/create_flow_run",
        json={
            "state": {
                "type": "SCHEDULED",
                "state_details": {"scheduled_time": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
            }
        },
    ).json()
    ids["FUTURE"] = [future["id"]]
    return ids


def test_health_counts_per_job_and_decides_status(client, prefect, worker_pool):
    name = unique("health-job")
    job_runs(client, unique("roadie-test-flow"), name)
    healthy = check_health(prefect, Settings(work_pool=worker_pool))
    figures = healthy.queues[name]
    assert (figures.waiting, figures.active, figures.failed) == (2, 1, 2)
    assert healthy.workers_online == 1
    assert healthy.failed_in_window == sum(q.failed for q in healthy.queues.values()) >= 2
    if healthy.failed_in_window <= 100:
        assert healthy.status == "healthy" and healthy.reasons == ()

    too_many = check_health(prefect, Settings(work_pool=worker_pool, health_max_failed=1))
    assert too_many.status == "unhealthy" and "failed in the last 60 min" in too_many.reasons[0]
    outside_window = check_health(prefect, Settings(work_pool=worker_pool, health_window_minutes=0))
    assert outside_window.queues[name].failed == 0
    nobody = check_health(prefect, Settings(work_pool=unique("roadie-empty-pool")))
    assert nobody.status == "unhealthy" and nobody.workers_online == 0
    assert any("no worker online" in r for r in nobody.reasons)
    assert set(healthy.as_json()) >= {"status", "queues"}
    assert healthy.as_json()["queues"][name] == {"waiting": 2, "active": 1, "failed": 2}


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """Samples by metric name, keyed by their sorted label items."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_come_from_the_api_and_only_grow(client, prefect, worker_pool):
    flow, name = unique("roadie-test-flow"), unique("metrics-job")
    job_runs(client, flow, name)
    server = OpsServer(prefect, "127.0.0.1", 0, Settings(work_pool=worker_pool)).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        first = scrape(url)
        processed = first["roadie_jobs_processed_total"]
        assert processed[(("queue", name), ("status", "completed"))] == 1
        assert processed[(("queue", name), ("status", "failed"))] == 1
        assert processed[(("queue", name), ("status", "crashed"))] == 1
        assert processed[(("queue", name), ("status", "cancelled"))] == 1
        buckets = first["roadie_job_duration_seconds_bucket"]
        bounds = [dict(k)["le"] for k in buckets if dict(k)["queue"] == name]
        assert bounds == [str(b) for b in DURATION_BUCKETS] + ["+Inf"]
        assert first["roadie_job_duration_seconds_count"][(("queue", name),)] == 1
        assert buckets[(("le", "1.0"), ("queue", name))] == 1  # forced states: well under a second of running
        assert first["roadie_queue_depth"][(("queue", name),)] == 2
        assert first["roadie_workers_online"][()] == 1

        # A second scrape does not count the same runs again; a new completion is counted once.
        run = client.create_flow_run(f"{flow}/{name}").flow_run
        for state in ("PENDING", "RUNNING"):
            set_state(client, run.id, state)
        time.sleep(1.2)
        set_state(client, run.id, "COMPLETED")
        second = scrape(url)
        assert second["roadie_jobs_processed_total"][(("queue", name), ("status", "completed"))] == 2
        assert second["roadie_jobs_processed_total"][(("queue", name), ("status", "failed"))] == 1
        assert second["roadie_job_duration_seconds_count"][(("queue", name),)] == 2
        assert second["roadie_job_duration_seconds_bucket"][(("le", "1.0"), ("queue", name))] == 1
        assert second["roadie_job_duration_seconds_bucket"][(("le", "5.0"), ("queue", name))] == 2
        assert second["roadie_job_duration_seconds_sum"][(("queue", name),)] > 1.0
        assert second["roadie_queue_depth"][(("queue", name),)] == 2

        health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=30)
        assert health.status_code == (200 if health.json()["status"] == "healthy" else 503)
        assert name in health.json()["queues"]
        assert httpx.get(f"http://127.0.0.1:{server.port}/nope", timeout=10).status_code == 404
    finally:
        server.stop()


def test_health_answers_from_its_latest_check_and_says_when_that_is_stale(prefect, worker_pool):
    """Requests do not wait on the Prefect API: they read the snapshot the checking thread keeps. One that is too
    old (the checks are stuck) is unhealthy, with that reason."""
    from roadie.ops.health import HealthSnapshots

    snapshots = HealthSnapshots(prefect, Settings(work_pool=worker_pool), every_s=3600, stale_after_s=1.0).start()
    try:
        status, body = snapshots.answer()
        assert body["workers_online"] == 1 and body["age_s"] < 1.0
        assert status == (200 if body["status"] == "healthy" else 503)
        with connect("http://127.0.0.1:9/api") as dead:
            snapshots.client = dead  # an answer that asked the API now would fail: none does
            assert snapshots.answer() == (status, {**body, "age_s": snapshots.answer()[1]["age_s"]})
        time.sleep(1.2)
        status, body = snapshots.answer()
        assert status == 503 and body["status"] == "unhealthy"
        assert "the last health check finished" in body["reasons"][-1]
    finally:
        snapshots.stop()


def test_health_endpoint_says_unhealthy_when_the_api_is_down():
    with connect("http://127.0.0.1:9/api") as dead:
        server = OpsServer(dead, "127.0.0.1", 0).start()
        try:
            response = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)
        finally:
            server.stop()
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy" and "Prefect API" in response.json()["reasons"][0]


def test_job_metrics_backfill_ignores_old_runs(client, prefect, worker_pool):
    name = unique("backfill-job")
    job_runs(client, unique("roadie-test-flow"), name)
    nothing_back = JobMetrics(prefect, Settings(work_pool=worker_pool, metrics_backfill_hours=0))
    nothing_back.refresh()
    assert not any(queue == name for queue, _ in nothing_back.processed)
    day_back = JobMetrics(prefect, Settings(work_pool=worker_pool))
    day_back.refresh()
    assert day_back.processed[(name, "completed")] == 1


# ---------------------------------------------------------------------- CLI and schema


def _cli_env(api_url: str) -> dict[str, str]:
    import os

    return {**os.environ, "PREFECT_API_URL": api_url, "ROADIE_PREFECT_API_URL": api_url}


def test_register_cli_prints_version_and_key(ops_env, tmp_path, pg_url, prefect_api):
    wav = write_wav(tmp_path / "my song (final).wav", sine(440, 1.0, 48000), 48000)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "roadie",
            "register",
            str(wav),
            "--owner",
            "cli-artist",
            "--title",
            "CLI song",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=_cli_env(prefect_api),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"version_id", "asset_key"}
    with sa.create_engine(pg_url).connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT v.status, t.title, u.username, a.key FROM track_versions v JOIN tracks t ON t.id = v.track_id "
                "JOIN users u ON u.id = t.owner_user_id JOIN assets a ON a.id = v.original_asset_id WHERE v.id = :id"
            ),
            {"id": out["version_id"]},
        ).one()
    assert tuple(row) == ("pending", "CLI song", "cli-artist", out["asset_key"])
    assert (tmp_path / "storage" / out["asset_key"]).read_bytes() == wav.read_bytes()

    missing = subprocess.run(
        [sys.executable, "-m", "roadie", "register", str(tmp_path / "nope.wav"), "--json"],
        capture_output=True,
        text=True,
        env=_cli_env(prefect_api),
        timeout=120,
    )
    assert missing.returncode == 2 and "is not a file" in missing.stderr and missing.stdout == ""


def test_failed_jobs_migration_matches_the_model(pg_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from roadie.db.models import Base
    from roadie.db.session import downgrade, upgrade

    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "failed_jobs" in repr(d)] == []

    lite = f"sqlite:///{tmp_path / 'ops.db'}"
    upgrade(lite, "0004")
    with sa.create_engine(lite).connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "failed_jobs" in repr(d)] == []
    downgrade(lite, "0001")
    assert "failed_jobs" not in sa.inspect(sa.create_engine(lite)).get_table_names()


def test_trigger_job_and_health_cli(client, ops_env, prefect_api):
    flow, name = unique("roadie-test-flow"), unique("job")
    make_deployment(client, flow, name, ["roadie", "roadie-job"])
    env = _cli_env(prefect_api)

    def roadie(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "roadie", *args], capture_output=True, text=True, env=env, timeout=120
        )

    key = f"{name}:once"
    first = roadie("trigger", "job", f"{flow}/{name}", "--params", '{"day": "2026-01-02"}', "--key", key)
    again = roadie("trigger", "job", f"{flow}/{name}", "--params", '{"day": "2026-01-02"}', "--key", key)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["created"] and not b["created"] and a["flow_run_id"] == b["flow_run_id"]
    assert client.read_flow_run(a["flow_run_id"]).parameters == {"day": "2026-01-02"}
    bad = roadie("trigger", "job", f"{flow}/{name}", "--params", "{day")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    unknown = roadie("trigger", "job", f"{flow}/no-such-job")
    assert unknown.returncode == 2 and "no deployment" in unknown.stderr

    env["ROADIE_WORK_POOL"] = unique("roadie-empty-pool")
    health = roadie("health")
    report = json.loads(health.stdout)
    assert health.returncode == 1 and report["status"] == "unhealthy" and report["workers_online"] == 0
    assert report["queues"][name] == {"waiting": 1, "active": 0, "failed": 0}


@pytest.mark.parametrize("stop", ["SIGINT", "SIGINT, started in the background", "SIGTERM"])
def test_health_serve_cli_answers_and_stops_on_ctrl_c(prefect_api, worker_pool, tmp_path, stop):
    """Ctrl-C, Ctrl-C to a server a script started in the background (which inherits SIGINT ignored), and
    `docker stop` (SIGTERM) all end it cleanly with exit code 0."""
    import os
    import signal

    from roadie.prefect_local import free_port

    port = free_port()
    env = {**_cli_env(prefect_api), "ROADIE_WORK_POOL": worker_pool}
    # stderr to a file, not an unread pipe: a full pipe would block the server's writes, and so its exit.
    with open(tmp_path / "stderr.txt", "w") as stderr:
        background = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if "background" in stop else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "roadie", "health", "--serve", "--port", str(port), "--host", "127.0.0.1"],
            env=env,
            stderr=stderr,
            text=True,
            preexec_fn=background,
        )
        try:
            report = None
            deadline = time.monotonic() + 60
            while report is None and time.monotonic() < deadline:
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
                    report = response.json()
                except httpx.ConnectError:
                    time.sleep(0.3)
            assert report is not None and report["workers_online"] == 1 and set(report) >= {"status", "queues"}
            assert response.status_code == (200 if report["status"] == "healthy" else 503)
            assert "roadie_workers_online 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
            os.kill(proc.pid, signal.SIGTERM if stop == "SIGTERM" else signal.SIGINT)
            try:
                returncode = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                returncode = None
            assert returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

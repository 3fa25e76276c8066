"""Security of roadie as deployed, all real: a Prefect server that demands an auth string, on PostgreSQL;
`roadie setup --deploy` of prefect.yaml (automations included); a process worker; roadie's database reached with a
password; SeaweedFS S3 with keys; a dead-letter webhook whose query string is its key.

- Values sent over REST are validated before any I/O: the server refuses what the deployment's schema forbids
  (409, naming the field), and a run created past the schema fails at once in the flow's own check, readable,
  with no task run at all.
- Secrets never show: after a failing ingest, its dead letter (through a webhook that first answers 500) and the
  bad-parameter runs, every log on the server, the worker's output, every artifact, every state message,
  track_versions.error, the failed_jobs rows, /health, /metrics, the webhook's bodies and the CLI's JSON are
  searched for each secret, raw, URL-encoded and base64 (the Authorization header)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from roadie import prefect_local
from roadie.ops.health_server import OpsServer
from roadie.ops.serve import WorkerProcess, worker_command
from roadie.prefect_api import connect
from roadie.settings import Settings, reload_settings
from tests import services
from tests.ops_support import Recorder
from tests.prefect_rest import PrefectREST
from tests.support import run_sql, sine, stack_env, wait_for, write_wav

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
POOL = "roadie-process"
# Distinctive values: none of them can turn up in any output by chance.
S3_ACCESS_KEY = "AKIAROADIESEC7F3A91QX"
S3_SECRET_KEY = "s3Secret/Zq81+roadie9c1eXk"
DB_PASSWORD = "pgSecret-Pw4b2d-roadie"
AUTH_STRING = "roadie-admin:authSecret61fe"
WEBHOOK_TOKEN = "hookSecretToken88aa"


def secret_forms() -> dict[str, str]:
    """Each secret as it could appear: raw, URL-encoded, and the auth string as its Basic header."""
    forms = {}
    for name, value in {
        "S3 access key": S3_ACCESS_KEY,
        "S3 secret key": S3_SECRET_KEY,
        "database password": DB_PASSWORD,
        "Prefect auth string": AUTH_STRING,
        "webhook query": WEBHOOK_TOKEN,
    }.items():
        forms[name] = value
        forms[f"{name} (URL-encoded)"] = quote(value, safe="")
    forms["Prefect auth string (Basic)"] = base64.b64encode(AUTH_STRING.encode()).decode()
    forms["Prefect auth password"] = AUTH_STRING.split(":", 1)[1]
    return forms


@dataclass
class SecureStack:
    api: str
    client: PrefectREST
    env: dict[str, str]
    db_url: str
    home: Path
    hook: Recorder
    server_log: Path
    worker: WorkerProcess | None = None
    cli_json: dict[str, str] = field(default_factory=dict)  # command -> its stdout (and stderr)
    runs: dict[str, str] = field(default_factory=dict)

    def sql(self, query: str, **params):
        return run_sql(self.db_url, query, **params)

    def roadie(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "roadie", *args],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def secure(pg_server_url: str, s3_server: str, tmp_path_factory) -> Iterator[SecureStack]:
    home = tmp_path_factory.mktemp("security")
    (home / "tmp").mkdir()
    hook = Recorder([500])  # the first notification is refused: its retry's log line names the hook
    with (
        services.scratch_database(pg_server_url, "prefect_sec", driver="postgresql+asyncpg") as prefect_db,
        services.scratch_database(pg_server_url, "roadie_sec", migrate=True) as plain_db,
    ):
        db_url = sa.make_url(plain_db).set(password=DB_PASSWORD).render_as_string(hide_password=False)
        try:
            with sa.create_engine(db_url).connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            pytest.skip(f"the test PostgreSQL does not take trust auth, so no made-up password works: {exc}")
        server_log = home / "prefect-server.log"
        server = prefect_local.start_prefect_server(
            home / "prefect-server",
            database_url=prefect_db,
            log=server_log,
            extra_env={"PREFECT_SERVER_API_AUTH_STRING": AUTH_STRING},
        )
        roadie_env = {
            **stack_env(home, db_url, s3_server, f"sec-{uuid.uuid4().hex[:8]}", S3_ACCESS_KEY, S3_SECRET_KEY),
            "ROADIE_DEAD_LETTER_WEBHOOK_URL": f"{hook.url}/dead-letters?token={WEBHOOK_TOKEN}",
            "ROADIE_PREFECT_API_URL": server.url,
            "ROADIE_WORK_POOL": POOL,
        }
        env = {
            **os.environ,
            **roadie_env,
            "PREFECT_API_URL": server.url,
            "PREFECT_API_AUTH_STRING": AUTH_STRING,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        client = PrefectREST(server.url, auth_string=AUTH_STRING)
        stack = SecureStack(server.url, client, env, db_url, home, hook, server_log)
        try:
            with pytest.MonkeyPatch.context() as mp:
                for key, value in roadie_env.items():
                    mp.setenv(key, value)
                reload_settings()
                # The server really demands the auth string.
                assert httpx.get(f"{server.url}/flows/", timeout=10).status_code in (401, 405)
                assert httpx.post(f"{server.url}/flows/filter", json={}, timeout=10).status_code == 401
                setup = stack.roadie("setup", "--no-docker", "--deploy", "--json", "--api-url", server.url, timeout=900)
                assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
                stack.cli_json["roadie setup --deploy --json"] = setup.stdout + setup.stderr
                assert json.loads(setup.stdout)["deployed"]
                name = "security-worker"
                stack.worker = WorkerProcess(name, worker_command(POOL, name, 4), env, home / "logs" / f"{name}.log")
                stack.worker.start()
                wait_for(
                    lambda: any(w.name == name and w.status == "ONLINE" for w in client.workers(POOL)),
                    120,
                    f"worker not online: {stack.worker.log.read_text(errors='replace')[-2000:]}"
                    if stack.worker.log.exists()
                    else "worker not online",
                )
                yield stack
        finally:
            if stack.worker is not None:
                stack.worker.drain()
                deadline = time.monotonic() + 30
                while stack.worker.alive and time.monotonic() < deadline:
                    time.sleep(0.2)
                stack.worker.kill()
            client.close()
            hook.close()
            server.stop()
            reload_settings()


# ---------------------------------------------------------------------- REST values validated before any I/O

SOME_UUID = "5b0f4c1e-2f7a-4d8e-9c3b-1a2b3c4d5e6f"
VERSION_JOBS = [
    "media-ingest/media-ingest",
    "transcode/transcode",
    "waveform/waveform",
    "artwork-extract/artwork-extract",
    "loudness/loudness",
    "fingerprint/fingerprint",
]


def bad_field(name: str) -> str:
    return f"Validation failed for field '{name}'"


def unexpected(name: str) -> str:
    return f"Additional properties are not allowed ('{name}' was unexpected)"


# (deployment, parameters, what the server's 409 says): refused by the deployment's schema, no run created.
REFUSED_BY_SCHEMA = [
    *[(dep, {"version_id": "not-a-uuid"}, bad_field("version_id")) for dep in VERSION_JOBS],
    *[(dep, {"version_id": 12345}, bad_field("version_id")) for dep in VERSION_JOBS],
    *[(dep, {"version_id": SOME_UUID, "priority": "high"}, unexpected("priority")) for dep in VERSION_JOBS],
    *[(dep, {"version_id": f"../../{SOME_UUID}"}, bad_field("version_id")) for dep in VERSION_JOBS[:2]],
    ("media-ingest/media-ingest", {"version_id": SOME_UUID, "formats": ["mp3"]}, bad_field("formats[0]")),
    ("media-ingest/media-ingest", {"version_id": SOME_UUID, "formats": "hls_opus"}, bad_field("formats")),
    ("media-ingest/media-ingest", {"version_id": SOME_UUID, "formats": []}, bad_field("formats")),
    ("transcode/transcode", {"version_id": SOME_UUID, "formats": ["hls_opus", "wav"]}, bad_field("formats[1]")),
    ("analytics-rollup/analytics-rollup", {"day": "yesterday"}, bad_field("day")),
    ("analytics-rollup/analytics-rollup", {"start": 20260101, "end": "2026-01-02"}, bad_field("start")),
    ("analytics-rollup/analytics-rollup", {"days": ["2026-01-01"]}, unexpected("days")),
    ("distribution/distribution", {"month": "2026-13-01"}, bad_field("month")),
    ("distribution/distribution", {"month": ["2026-01"]}, bad_field("month")),
    ("distribution/distribution", {"month": "2026-01", "dry_run": True}, unexpected("dry_run")),
    ("dead-letter/dead-letter", {"flow_run_id": "x; DROP TABLE failed_jobs"}, bad_field("flow_run_id")),
    ("dead-letter/dead-letter", {"flow_run_id": SOME_UUID, "force": True}, unexpected("force")),
]

# (deployment, parameters, what the failed run's message must say): runs created past the server's schema
# (enforce_parameter_schema: false, as an older deployment or another client might) fail in the flow's own check.
FAILED_IN_THE_FLOW = [
    ("media-ingest/media-ingest", {"version_id": "not-a-uuid"}, ["version_id", "is not a UUID"]),
    ("media-ingest/media-ingest", {"version_id": 12345}, ["version_id", "valid string"]),
    (
        "media-ingest/media-ingest",
        {"version_id": SOME_UUID, "formats": ["mp3"]},
        ["formats", "'hls_opus', 'hls_aac' or 'hls_alac'"],
    ),
    ("transcode/transcode", {"version_id": SOME_UUID, "formats": "hls_opus"}, ["formats", "valid list"]),
    ("waveform/waveform", {"version_id": "../../etc/passwd"}, ["version_id", "is not a UUID"]),
    ("loudness/loudness", {"version_id": SOME_UUID.upper() + "0"}, ["version_id", "is not a UUID"]),
    ("fingerprint/fingerprint", {"version_id": [SOME_UUID]}, ["version_id", "valid string"]),
    ("artwork-extract/artwork-extract", {"version_id": None}, ["version_id", "valid string"]),
    ("analytics-rollup/analytics-rollup", {"day": "2026/01/02"}, ["day", "expected YYYY-MM-DD"]),
    ("distribution/distribution", {"month": 202601}, ["month", "valid string"]),
    ("dead-letter/dead-letter", {"flow_run_id": "nope"}, ["flow_run_id", "is not a UUID"]),
]


def create_run(stack: SecureStack, deployment: str, parameters: dict, enforce: bool | None = None) -> httpx.Response:
    body: dict = {"parameters": parameters}
    if enforce is not None:
        body["enforce_parameter_schema"] = enforce
    dep_id = stack.client.deployment_id(deployment)
    return stack.client.request("POST", f"/deployments/{dep_id}/create_flow_run", json=body, ok=(201, 409, 422))


def runs_not_from_schedules(stack: SecureStack) -> set[str]:
    # The server's scheduler adds the rollup's and the distribution's next runs whenever it wakes (a CI run once
    # saw 6 appear mid-test), so only runs that something asked for count here.
    runs = stack.client.request("POST", "/flow_runs/filter", json={"limit": 200}).json()
    return {run["id"] for run in runs if not run["auto_scheduled"]}


def test_the_server_refuses_what_the_schema_forbids(secure):
    before = runs_not_from_schedules(secure)
    for deployment, parameters, says in REFUSED_BY_SCHEMA:
        response = create_run(secure, deployment, parameters)
        assert response.status_code == 409, (deployment, parameters, response.status_code, response.text)
        detail = response.json()["detail"]
        assert detail.startswith("Error creating flow run: Validation failed") and says in detail, (
            deployment,
            parameters,
            detail,
        )
    assert runs_not_from_schedules(secure) == before  # nothing was started
    # The same deployments take good values: the refusals were the values', not the deployments'.
    good = create_run(secure, "distribution/distribution", {"month": "2026-01"}, enforce=None)
    assert good.status_code == 201
    secure.client.request(
        "POST", f"/flow_runs/{good.json()['id']}/set_state", json={"state": {"type": "CANCELLED"}, "force": True}
    )


def test_a_run_past_the_schema_fails_at_once_in_the_flow(secure):
    created = {}
    for i, (deployment, parameters, _) in enumerate(FAILED_IN_THE_FLOW):
        response = create_run(secure, deployment, parameters, enforce=False)
        assert response.status_code == 201, (deployment, parameters, response.text)
        created[i] = response.json()["id"]
    for i, (deployment, parameters, expected) in enumerate(FAILED_IN_THE_FLOW):
        run = secure.client.wait_for_flow_run(created[i], timeout_s=300)
        message = run.state_message or ""
        assert run.state_type == "FAILED", (deployment, parameters, run.state_name, message)
        assert message.startswith("Validation of flow parameters failed"), (deployment, message)
        assert all(text in message for text in expected), (deployment, parameters, message)
        assert "Traceback" not in message and 'File "' not in message
        # Before any I/O: not one task ran (every read, write or download in roadie is a task).
        assert secure.client.task_runs_of([run.id]) == [], (deployment, parameters)
        assert run.total_run_time < 5, (deployment, run.total_run_time)
    secure.runs["bad-parameters"] = ",".join(created.values())


def test_an_unknown_field_forced_past_the_schema_does_no_io(secure):
    """Prefect's engine matches the run's parameters to the signature before the flow's own validation, so an
    unknown field (possible only with enforce_parameter_schema off) ends the run Crashed, not Failed: a Prefect
    limitation, and why the schema refuses unknown fields. Still, nothing of roadie ran."""
    response = create_run(
        secure, "media-ingest/media-ingest", {"version_id": SOME_UUID, "priority": "high"}, enforce=False
    )
    assert response.status_code == 201
    run = secure.client.wait_for_flow_run(response.json()["id"], timeout_s=300)
    assert run.state_type in ("FAILED", "CRASHED") and run.total_run_time < 5
    assert secure.client.task_runs_of([run.id]) == []


# ---------------------------------------------------------------------- secrets stay secret


def register(tmp_path: Path, name: str, audio: bool):
    from roadie.catalog.registration import register_upload

    path = tmp_path / f"{name}.wav"
    if audio:
        write_wav(path, sine(330, 2.0, 44100), 44100)
    else:
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    return register_upload(path, title=name, owner="security-artist")


def server_logs(stack: SecureStack) -> list[dict]:
    logs, offset = [], 0
    while True:
        page = stack.client.request("POST", "/logs/filter", json={"limit": 200, "offset": offset}).json()
        logs.extend(page)
        offset += len(page)
        if len(page) < 200:
            return logs


def all_pages(stack: SecureStack, path: str) -> list[dict]:
    out, offset = [], 0
    while True:
        page = stack.client.request("POST", path, json={"limit": 200, "offset": offset}).json()
        out.extend(page)
        offset += len(page)
        if len(page) < 200:
            return out


def test_secrets_appear_in_no_output(secure, tmp_path):
    bad = register(tmp_path, "broken", audio=False)
    good = register(tmp_path, "fine", audio=True)
    # The API contract (tests/platform_client.py): trigger_ingest with a version id and formats.
    bad_run = secure.client.trigger_ingest(bad.version_id, ["hls_opus"]).flow_run.id
    good_run = secure.client.trigger_ingest(good.version_id, ["hls_opus"]).flow_run.id
    assert secure.client.wait_for_flow_run(good_run, timeout_s=300).state_type == "COMPLETED"
    final = secure.client.wait_for_flow_run(bad_run, timeout_s=300)
    assert final.state_type == "FAILED"

    # Its dead letter: filed, and the webhook took it at the second try (the first answered 500).
    wait_for(
        lambda: secure.sql("SELECT * FROM failed_jobs WHERE flow_run_id = :id", id=bad_run),
        180,
        "no failed_jobs row for the failed ingest",
    )
    wait_for(
        lambda: any(b.get("flow_run_id") == bad_run for _, b in secure.hook.requests),
        120,
        "the webhook never got the failed ingest",
    )
    dead_letter_runs = wait_for(
        lambda: [r for r in secure.client.filter_flow_runs({"name": {"like_": "dead-letter-"}}) if r.is_final] or None,
        60,
        "no finished dead-letter run",
    )
    assert any(r.state_type == "COMPLETED" for r in dead_letter_runs)

    # Every output, by where it shows.
    outputs: dict[str, str] = {}
    logs = wait_for(
        lambda: (lg := server_logs(secure)) and any("answered 500" in x["message"] for x in lg) and lg,
        60,
        "the dead-letter webhook's refusal was never logged",
    )
    outputs["Prefect logs"] = "\n".join(x["message"] for x in logs)
    outputs["worker output"] = secure.worker.log.read_text(errors="replace")
    outputs["artifacts"] = json.dumps(all_pages(secure, "/artifacts/filter"))
    runs = all_pages(secure, "/flow_runs/filter")
    outputs["flow run states"] = json.dumps([r.get("state") for r in runs])
    outputs["task run states"] = json.dumps([t.get("state") for t in all_pages(secure, "/task_runs/filter")])
    outputs["track_versions.error"] = json.dumps(
        [r.error for r in secure.sql("SELECT error FROM track_versions WHERE error IS NOT NULL")]
    )
    outputs["failed_jobs rows"] = json.dumps(
        [dict(r._mapping) for r in secure.sql("SELECT * FROM failed_jobs")], default=str
    )
    outputs["webhook bodies"] = json.dumps([body for _, body in secure.hook.requests])
    with connect(secure.api, AUTH_STRING) as prefect:
        server = OpsServer(prefect, "127.0.0.1", 0, Settings(work_pool=POOL)).start()
        try:
            outputs["/health"] = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=60).text
            outputs["/metrics"] = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=60).text
        finally:
            server.stop()
    # The health endpoint when the API answers an error: its reason names the URL (here one with the auth string
    # as its user:password, and a path the server does not have), never the password.
    port = secure.api.rsplit(":", 1)[1].split("/")[0]
    with connect(f"http://{AUTH_STRING}@127.0.0.1:{port}/no-such-api", AUTH_STRING) as dead:
        server = OpsServer(dead, "127.0.0.1", 0, Settings(prefect_api_auth_string=AUTH_STRING)).start()
        try:
            outputs["/health, API error"] = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=30).text
        finally:
            server.stop()
    cli = {
        "roadie failed --json": secure.roadie("failed", "--json", "--limit", "500"),
        "roadie health": secure.roadie("health"),
        "roadie trigger ingest --wait": secure.roadie(
            "trigger", "ingest", "--version-id", bad.version_id, "--formats", "hls_opus", "--wait", "--timeout", "120"
        ),
        "roadie trigger job (refused)": secure.roadie(
            "trigger", "job", "media-ingest/media-ingest", "--params", json.dumps({"version_id": "nope"})
        ),
        "roadie db upgrade": secure.roadie("db", "upgrade"),
    }
    for command, done in cli.items():
        outputs[command] = done.stdout + "\n" + done.stderr
    outputs.update(secure.cli_json)

    # Each output was really collected, and holds what it should (so searching it means something).
    expected = {
        "Prefect logs": ["token=***", bad.version_id],
        "worker output": ["dead-letter"],
        "artifacts": ["dead-letter", "Loudness"],
        "flow run states": ["FAILED", "COMPLETED", "audio"],
        "task run states": ["COMPLETED"],
        "track_versions.error": ["audio"],
        "failed_jobs rows": [bad_run, bad.version_id],
        "webhook bodies": [bad_run],
        "/health": ["media-ingest", "workers_online"],
        "/metrics": ["roadie_jobs_processed_total", 'queue="media-ingest"'],
        "/health, API error": ["Prefect API", "PrefectHTTPStatusError", "roadie-admin:***@127.0.0.1"],
        "roadie failed --json": [bad_run],
        "roadie health": ["media-ingest"],
        "roadie trigger ingest --wait": [bad_run, "Failed"],
        "roadie trigger job (refused)": ["version_id", "409"],
        "roadie db upgrade": ["postgres:***@"],
        "roadie setup --deploy --json": ["media-ingest"],
    }
    for where, texts in expected.items():
        for text in texts:
            assert text.lower() in outputs[where].lower(), (
                f"{where} does not contain {text!r}: {outputs[where][-1500:]}"
            )
    leaks = [
        f"{name} in {where}: …{text[max(0, text.find(value) - 120) : text.find(value) + 60]}…"
        for where, text in outputs.items()
        for name, value in secret_forms().items()
        if value in text
    ]
    assert leaks == [], "\n\n".join(leaks)

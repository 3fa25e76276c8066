"""roadie as a deployed system, all real: `prefect server start`, `prefect deploy --all` from prefect.yaml, two
process workers on roadie-process, PostgreSQL, an S3 server and ffmpeg. Jobs are started the way the platform's
API starts them: over REST with httpx.

The tests of this module run in order and share one stack: a run whose worker is SIGKILLed first (its crash is
detected in the background while the others run), then six ingests, a bad input, the dead letters of both, a
retry, a rollup backfill over REST, health and metrics, `roadie serve`, and the Docker variant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.topology import ensure_topology
from roadie.ops.health_server import OpsServer
from roadie.ops.serve import Serving, WorkerProcess, descendants, exited, kill_tree, split_by_presence, worker_command
from roadie.prefect_api import connect
from roadie.prefect_local import free_port
from roadie.settings import Settings, reload_settings
from tests.ops_support import Recorder, flow_run_pids, roadie_serve
from tests.platform_client import FlowRun
from tests.prefect_rest import PrefectREST
from tests.support import run_sql, sine, stack_env, wait_for, write_wav

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
POOL = "roadie-process"
INGEST = "media-ingest/media-ingest"
# Flow runs beat every 30 s (prefect.yaml); a run silent this long is marked Crashed.
ZOMBIE_AFTER_S = 50
# Limit events are stamped by the process that emits them, just after the API call: allow that much skew.
EMIT_SKEW_S = 0.25

# (seconds, rate, channels, formats): short audio, a mix of shapes; 9 renditions in all.
UPLOADS = [
    (3.0, 44100, 2, ["hls_opus", "hls_aac"]),
    (3.5, 48000, 1, ["hls_opus"]),
    (4.0, 48000, 2, ["hls_aac", "hls_opus"]),
    (3.0, 44100, 1, ["hls_opus"]),
    (5.0, 48000, 2, ["hls_opus"]),
    (4.5, 44100, 2, ["hls_opus", "hls_aac"]),
]


@dataclass
class Stack:
    api: str
    client: PrefectREST
    env: dict[str, str]
    pg_url: str
    home: Path
    hook: Recorder
    workers: list[WorkerProcess] = field(default_factory=list)
    missing: tuple[str, ...] = ()
    deploy_cmd: list[str] = field(default_factory=list)
    victim: dict = field(default_factory=dict)
    ingests: dict[str, FlowRun] = field(default_factory=dict)
    bad: dict = field(default_factory=dict)

    def start_worker(self, name: str, health_port: int | None = None) -> WorkerProcess:
        cmd, env = worker_command(POOL, name, None), self.env
        if health_port:  # as in the image: the worker's own health endpoint
            cmd, env = [*cmd, "--with-healthcheck"], {**env, "PREFECT_WORKER_WEBSERVER_PORT": str(health_port)}
        worker = WorkerProcess(name, cmd, env, self.home / "logs" / f"{name}.log")
        worker.health_port = health_port  # type: ignore[attr-defined]
        worker.start()
        self.workers.append(worker)
        return worker

    def wait_online(self, names: list[str], timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            online = {w.name for w in self.client.workers(POOL) if w.status == "ONLINE"}
            if set(names) <= online:
                return
            time.sleep(0.5)
        logs = {w.name: w.log.read_text(errors="replace")[-1500:] for w in self.workers if w.log.exists()}
        raise TimeoutError(f"workers {names} not online: {logs}")

    def sql(self, query: str, **params):
        return run_sql(self.pg_url, query, **params)


@pytest.fixture(scope="module")
def stack(prefect_api: str, pg_url: str, s3_server: str, tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("e2e")
    (home / "tmp").mkdir()
    hook = Recorder()
    roadie_env = {
        **stack_env(home, pg_url, s3_server, f"e2e-{uuid.uuid4().hex[:8]}"),
        "ROADIE_DEAD_LETTER_WEBHOOK_URL": f"{hook.url}/dead-letters",
        "ROADIE_ZOMBIE_AFTER_SECONDS": str(ZOMBIE_AFTER_S),
    }
    env = {
        **os.environ,
        **roadie_env,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    client = PrefectREST(prefect_api)
    s = Stack(prefect_api, client, env, pg_url, home, hook)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in roadie_env.items():
            mp.setenv(key, value)
        reload_settings()
        try:
            with connect(prefect_api) as api:
                ensure_topology(api, docker=False, zombie_after_seconds=ZOMBIE_AFTER_S)
            present, missing = split_by_presence(ROOT / "prefect.yaml", ROOT)
            s.missing = tuple(missing)
            s.deploy_cmd = [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy"]
            # The acceptance command; while flow modules are still missing, deploy the ones there by name (and
            # test_every_deployment_is_deployed fails, naming the missing ones).
            s.deploy_cmd += ["--all"] if not s.missing else [a for n in present for a in ("--name", n)]
            done = subprocess.run(s.deploy_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            for i in (1, 2):
                s.start_worker(f"e2e-worker-{i}")
            s.wait_online([w.name for w in s.workers])
            yield s
        finally:
            Serving(prefect_api, s.workers).stop(grace_s=30, say=print)  # drain, wait for runs in flight, kill
            client.close()
            hook.close()
    reload_settings()


def register(tmp_path: Path, name: str, seconds: float, rate: int, channels: int, lossless: bool = False):
    from roadie.catalog.registration import register_upload

    wav = write_wav(tmp_path / f"{name}.wav", sine(220 + 110 * channels, seconds, rate, channels=channels), rate)
    return register_upload(wav, title=name, owner="e2e-artist", lossless=lossless)


def post(http: httpx.Client, url: str, body: dict) -> httpx.Response:
    """POST as an API client should: a busy server (503, e.g. SQLite locked) is asked again."""
    for attempt in range(6):
        response = http.post(url, json=body)
        if response.status_code not in (429, 503):
            return response
        time.sleep(0.5 * 2**attempt)
    return response


def failed_job(stack: Stack, flow_run_id: str):
    rows = stack.sql(
        "SELECT id::text AS id, flow_name, deployment_name, parameters, state, error, attempts, "
        "flow_run_name FROM failed_jobs WHERE flow_run_id = :id",
        id=flow_run_id,
    )
    return rows[0] if rows else None


# ---------------------------------------------------------------------- deployments


def test_deployments_are_on_the_server_with_utc_schedules(stack):
    present, _ = split_by_presence(ROOT / "prefect.yaml", ROOT)
    deployments = {d.name: d for d in stack.client.filter_deployments(tags_all=["roadie"])}
    assert set(present) <= set(deployments)
    for name in present:
        d = deployments[name]
        assert d.work_pool_name == POOL
        assert ("roadie-job" in d.tags) == (name != "dead-letter")
    expected_queue = {
        "media-ingest": "ingest",
        "transcode": "ingest",
        "dead-letter": "ops",
        "analytics-rollup": "batch",
        "distribution": "batch",
    }
    for name, queue in expected_queue.items():
        if name in deployments:
            assert deployments[name].work_queue_name == queue
    assert [(s["cron"], s["timezone"]) for s in deployments["analytics-rollup"].schedules] == [("0 1 * * *", "UTC")]
    assert [(s["cron"], s["timezone"]) for s in deployments["distribution"].schedules] == [("0 2 1 * *", "UTC")]
    assert deployments["analytics-rollup"].concurrency_limit == 1
    # The server's calendar: the next runs fall at 01:00 UTC daily and 02:00 UTC on the 1st.
    for name, (hour, first_of_month) in {"analytics-rollup": (1, False), "distribution": (2, True)}.items():
        dep_id = deployments[name].id
        stack.client.request("POST", f"/deployments/{dep_id}/schedule", json={"min_runs": 3, "max_runs": 3})
        upcoming = stack.client.filter_flow_runs(
            {"state": {"type": {"any_": ["SCHEDULED"]}}}, deployments={"id": {"any_": [dep_id]}}
        )
        assert len(upcoming) >= 3
        for r in upcoming:
            at = r.expected_start_time.astimezone(UTC)
            assert (at.hour, at.minute) == (hour, 0) and (at.day == 1 or not first_of_month)
    automations = stack.client.request("POST", "/automations/filter", json={}).json()
    assert {"roadie-dead-letters", "roadie-crashed-runs"} <= {a["name"] for a in automations}


def test_every_deployment_is_deployed(stack):
    assert stack.missing == (), f"flow modules not there yet, so not deployed: {stack.missing}"
    assert "--all" in stack.deploy_cmd


# ---------------------------------------------------------------------- a worker killed mid-run


def test_killing_a_worker_mid_run(stack, tmp_path):
    """Encoders busy (the test holds both transcode slots), so the run waits inside; then its worker dies."""
    from prefect.concurrency.sync import concurrency

    reg = register(tmp_path, "victim", 3.0, 44100, 2)
    since = datetime.now(UTC) - timedelta(seconds=5)
    with concurrency("transcode", occupy=2, strict=True):
        run_id = stack.client.trigger_ingest(reg.version_id, ["hls_opus"]).flow_run.id
        # Alive and reported alive: Running, and its first heartbeat is on the server.
        wait_for(
            lambda: stack.client.events(
                ["prefect.flow-run.heartbeat"], since=since, resource_ids=[f"prefect.flow-run.{run_id}"]
            ),
            120,
            "no heartbeat",
        )
        assert stack.client.read_flow_run(run_id).state_type == "RUNNING"
        pids = flow_run_pids(run_id)
        owner = [w for w in stack.workers if w.alive and set(pids) & set(descendants(w.proc.pid))]
        assert len(owner) == 1, (pids, [w.name for w in stack.workers])
        kill_tree(owner[0].proc.pid)  # SIGKILL: the worker and the run's processes, as when a machine dies
        owner[0].proc.wait()
        assert owner[0].proc.returncode == -signal.SIGKILL
        assert all(wait_for(lambda pid=pid: exited(pid), 10, f"process {pid} is gone", poll_s=0.2) for pid in pids)
    stack.victim = {"run_id": run_id, "version_id": reg.version_id, "killed_at": time.monotonic()}
    replacement = stack.start_worker("e2e-worker-3", health_port=free_port())
    stack.wait_online([replacement.name])
    assert stack.client.read_flow_run(run_id).state_type == "RUNNING"  # nobody is left to say otherwise


# ---------------------------------------------------------------------- ingests over REST


def max_concurrent(intervals: list[tuple[datetime, datetime, int]]) -> int:
    points = sorted(
        [(start, 1, slots) for start, _, slots in intervals] + [(end, 0, -slots) for _, end, slots in intervals]
    )  # at a tie, a release comes first
    held = peak = 0
    for _, _, delta in points:
        held += delta
        peak = max(peak, held)
    return peak


def test_six_ingests_through_rest_complete_exactly_once(stack, tmp_path):
    started = datetime.now(UTC)
    regs = [register(tmp_path, f"take-{i}", *shape[:3]) for i, shape in enumerate(UPLOADS)]
    triggered = {}
    with httpx.Client(base_url=stack.api, timeout=30) as http:
        # What the platform's API does, in plain HTTP.
        dep = http.get(f"/deployments/name/{INGEST}").raise_for_status().json()
        for reg, shape in zip(regs, UPLOADS, strict=False):
            body = {
                "parameters": {"version_id": reg.version_id, "formats": shape[3]},
                "idempotency_key": f"media-ingest:{reg.version_id}",
            }
            response = post(http, f"/deployments/{dep['id']}/create_flow_run", body)
            assert response.status_code == 201, response.text
            triggered[reg.version_id] = response.json()["id"]
        # The API retries a request (a timeout, a double click): same key, same run, nothing new.
        twice = regs[2].version_id
        repeat = post(
            http,
            f"/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"version_id": twice, "formats": UPLOADS[2][3]}, "idempotency_key": f"media-ingest:{twice}"},
        )
        assert repeat.status_code == 200 and repeat.json()["id"] == triggered[twice]

        final = {vid: stack.client.wait_for_flow_run(run_id, timeout_s=600) for vid, run_id in triggered.items()}
        again = stack.client.trigger_ingest(twice, UPLOADS[2][3])  # after it finished, too
        assert not again.created and again.flow_run.id == triggered[twice]

    for vid, run in final.items():
        assert run.state_type == "COMPLETED", (run.name, run.state_message)
        assert run.name == f"ingest-{vid}" and run.run_count == 1
        states = [s["type"] for s in stack.client.flow_run_states(run.id)]
        assert states.count("RUNNING") == 1 and states[-1] == "COMPLETED", states
        same_version = stack.client.filter_flow_runs({"name": {"any_": [f"ingest-{vid}"]}})
        assert [r.id for r in same_version] == [run.id]
    stack.ingests = final

    # The rows the API reads.
    from roadie.catalog.views import master_key
    from roadie.storage import get_storage

    storage = get_storage()
    for reg, (_, _, _, formats) in zip(regs, UPLOADS, strict=False):
        ((status, error),) = stack.sql("SELECT status, error FROM track_versions WHERE id = :id", id=reg.version_id)
        assert (status, error) == ("ready", None)
        rows = stack.sql(
            "SELECT format, status, segment_count FROM transcodes WHERE track_version_id = :id", id=reg.version_id
        )
        assert sorted(r.format for r in rows) == sorted(formats)
        assert all(r.status == "ready" and r.segment_count >= 1 for r in rows)
        assert storage.exists(master_key(reg.version_id))

    # At most 2 transcodes at once: each transcode task run's hold on the "transcode" slots, from the API.
    limit = stack.client.request("GET", "/v2/concurrency_limits/transcode").json()
    run_ids = {f"prefect.flow-run.{r.id}" for r in final.values()}
    tasks = {t.id: t for t in stack.client.task_runs_of([r.id for r in final.values()])}
    transcodes = [t for t in tasks.values() if t.name.startswith("transcode-")]
    assert len(transcodes) == sum(len(shape[3]) for shape in UPLOADS)

    def slot_holds() -> dict[str, dict] | None:
        """Acquired/released pairs per task run, once the server has persisted all of them and every transcode
        task run's end (it writes task run states from events, in batches, after the flow run is over)."""
        tasks.update({t.id: t for t in stack.client.task_runs_of([r.id for r in final.values()])})
        if any(tasks[t.id].end_time is None for t in transcodes):
            return None
        holds: dict[str, dict] = {}
        for e in stack.client.events(
            ["prefect.concurrency-limit.acquired", "prefect.concurrency-limit.released"],
            since=started,
            resource_ids=[f"prefect.concurrency-limit.{limit['id']}"],
        ):
            task_run = (e.related_id("task-run") or "").removeprefix("prefect.task-run.")
            if e.related_id("flow-run") in run_ids and task_run:
                holds.setdefault(task_run, {})[e.event.rsplit(".", 1)[1]] = e
        complete = sorted(holds) == sorted(t.id for t in transcodes) and all(len(p) == 2 for p in holds.values())
        return holds if complete else None

    holds = wait_for(slot_holds, 60, "the transcode slot events of every transcode task run", poll_s=2)
    intervals = []
    for task_id, pair in holds.items():
        acquired, released = pair["acquired"].occurred, pair["released"].occurred
        task = tasks[task_id]
        assert task.start_time <= acquired <= released <= task.end_time + timedelta(seconds=1)
        intervals.append(
            (
                acquired,
                max(acquired, released - timedelta(seconds=EMIT_SKEW_S)),
                int(pair["acquired"].resource["slots-acquired"]),
            )
        )
    assert max_concurrent(intervals) <= 2
    # Without the limit these runs would have encoded more at once: their task runs overlapped further.
    task_spans = [(tasks[t.id].start_time, tasks[t.id].end_time, 1) for t in transcodes]
    print(f"transcodes at once: {max_concurrent(intervals)} encoding, {max_concurrent(task_spans)} task runs")


# ---------------------------------------------------------------------- dead letters


def test_bad_input_run_lands_in_failed_jobs(stack, tmp_path):
    from roadie.catalog.registration import register_upload

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    reg = register_upload(broken, title="broken", owner="e2e-artist")
    # Through the CLI this time: `roadie trigger ingest` is the same REST call, then polls.
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "roadie",
            "trigger",
            "ingest",
            "--version-id",
            reg.version_id,
            "--formats",
            "hls_opus",
            "--wait",
            "--timeout",
            "300",
        ],
        cwd=stack.home,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [json.loads(line) for line in cli.stdout.splitlines()]
    assert cli.returncode == 1 and lines[0]["created"] and lines[-1]["state"] == "Failed", cli.stderr
    assert lines[0]["idempotency_key"] == f"media-ingest:{reg.version_id}"
    run = stack.client.read_flow_run(lines[0]["flow_run_id"])
    assert run.state_type == "FAILED" and run.run_count == 1
    row = wait_for(lambda: failed_job(stack, run.id), 120, "no failed_jobs row for the bad input")
    assert (row.flow_name, row.deployment_name, row.state) == ("media-ingest", "media-ingest", "Failed")
    assert row.parameters == {"version_id": reg.version_id, "formats": ["hls_opus"]}
    assert row.attempts == 1  # invalid input is never retried
    assert row.error == run.state_message and row.flow_run_name == f"ingest-{reg.version_id}"
    ((status, error),) = stack.sql("SELECT status, error FROM track_versions WHERE id = :id", id=reg.version_id)
    assert status == "failed" and error
    posted = wait_for(
        lambda: [b for p, b in stack.hook.requests if b.get("flow_run_id") == run.id], 60, "no webhook notification"
    )
    assert posted[0]["failed_job_id"] == row.id and posted[0]["state"] == "Failed"
    stack.bad = {"run_id": run.id, "version_id": reg.version_id}


def test_killed_run_is_marked_crashed_and_lands_in_failed_jobs(stack):
    victim = stack.victim
    assert victim, "test_killing_a_worker_mid_run did not run"
    run = wait_for(
        lambda: (r := stack.client.read_flow_run(victim["run_id"])).state_type == "CRASHED" and r,
        ZOMBIE_AFTER_S + 120,
        "the killed run was not marked Crashed",
        poll_s=2,
    )
    assert "no heartbeat" in run.state_message
    row = wait_for(lambda: failed_job(stack, run.id), 120, "no failed_jobs row for the crashed run")
    assert (row.deployment_name, row.state) == ("media-ingest", "Crashed")
    assert row.parameters["version_id"] == victim["version_id"]
    # Nothing of the dead process ran this: the version would otherwise stay `processing` for ever.
    ((status, error),) = stack.sql("SELECT status, error FROM track_versions WHERE id = :id", id=victim["version_id"])
    assert status == "failed" and "ended Crashed" in error
    assert wait_for(
        lambda: [b for p, b in stack.hook.requests if b.get("flow_run_id") == run.id], 60, "no webhook notification"
    )
    victim["failed_job_id"] = row.id


def test_failed_retry_requeues_the_crashed_ingest(stack):
    job_id = stack.victim.get("failed_job_id")
    assert job_id, "the crashed run was not filed"
    cli = subprocess.run(
        [sys.executable, "-m", "roadie", "failed", "--retry", job_id, "--json"],
        cwd=stack.home,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout)
    assert out["created"] and out["parameters"]["version_id"] == stack.victim["version_id"]
    run = stack.client.wait_for_flow_run(out["flow_run_id"], timeout_s=300)
    assert run.state_type == "COMPLETED", run.state_message
    ((status,),) = stack.sql("SELECT status FROM track_versions WHERE id = :id", id=stack.victim["version_id"])
    assert status == "ready"
    listed = subprocess.run(
        [sys.executable, "-m", "roadie", "failed", "--json"],
        cwd=stack.home,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = {r["id"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows[job_id]["retry_flow_run_id"] == out["flow_run_id"]


# ---------------------------------------------------------------------- batch over REST


def test_rollup_backfill_with_start_and_end_through_rest(stack):
    tracks = [
        r.track_id
        for r in stack.sql(
            "SELECT track_id::text AS track_id FROM track_versions WHERE status = 'ready' ORDER BY created_at LIMIT 2"
        )
    ]
    assert len(tracks) == 2
    day1, day2 = datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC)
    plays = [
        (tracks[0], day1 + timedelta(hours=1)),
        (tracks[0], day1 + timedelta(hours=23, minutes=59, seconds=59)),
        (tracks[1], day1 + timedelta(hours=5)),
        (tracks[0], day2),
        (tracks[1], day2 + timedelta(days=1)),
    ]
    for track, at in plays:
        stack.sql(
            "INSERT INTO analytics_play (track_id, started_at, watch_ms, completed) VALUES (:t, :at, 1000, true)",
            t=track,
            at=at,
        )
    with httpx.Client(base_url=stack.api, timeout=30) as http:
        dep = http.get("/deployments/name/analytics-rollup/analytics-rollup").raise_for_status().json()
        created = post(
            http,
            f"/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"start": "2026-03-09", "end": "2026-03-10"}},
        )
        assert created.status_code == 201, created.text
    run = stack.client.wait_for_flow_run(created.json()["id"], timeout_s=300)
    assert run.state_type == "COMPLETED", run.state_message
    assert run.parameters == {"start": "2026-03-09", "end": "2026-03-10"}
    rows = stack.sql(
        "SELECT track_id::text AS track_id, day, plays FROM analytics_daily "
        "WHERE day BETWEEN '2026-03-09' AND '2026-03-11' AND track_id IN (:a, :b) ORDER BY day, track_id",
        a=tracks[0],
        b=tracks[1],
    )
    got = {(r.track_id, r.day.isoformat()): r.plays for r in rows}
    assert got == {(tracks[0], "2026-03-09"): 2, (tracks[1], "2026-03-09"): 1, (tracks[0], "2026-03-10"): 1}


# ---------------------------------------------------------------------- health and metrics, live


def test_health_and_metrics_against_the_live_system(stack):
    with connect(stack.api) as api:
        server = OpsServer(api, "127.0.0.1", 0, Settings(work_pool=POOL)).start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            health = httpx.get(f"{base}/health", timeout=60)
            metrics = httpx.get(f"{base}/metrics", timeout=60)
        finally:
            server.stop()
    report = health.json()
    assert health.status_code == 200 and report["status"] == "healthy", report
    ingest = report["queues"]["media-ingest"]
    assert ingest["failed"] >= 2 and ingest["active"] == 0 and ingest["waiting"] == 0
    assert report["workers_online"] >= 2

    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    dep_id = stack.client.deployment_id(INGEST)

    def api_count(state: str) -> int:
        return stack.client.count_flow_runs(
            {"state": {"type": {"any_": [state]}}}, deployments={"id": {"any_": [dep_id]}}
        )

    processed = samples["roadie_jobs_processed_total"]
    for status in ("completed", "failed", "crashed"):
        assert processed[(("queue", "media-ingest"), ("status", status))] == api_count(status.upper())
    assert api_count("COMPLETED") >= len(UPLOADS) + 1 and api_count("CRASHED") >= 1 and api_count("FAILED") >= 1
    count = samples["roadie_job_duration_seconds_count"][(("queue", "media-ingest"),)]
    assert count == api_count("COMPLETED")
    assert samples["roadie_job_duration_seconds_bucket"][(("le", "+Inf"), ("queue", "media-ingest"))] == count
    assert samples["roadie_job_duration_seconds_sum"][(("queue", "media-ingest"),)] > 0
    assert processed[(("queue", "analytics-rollup"), ("status", "completed"))] >= 1
    assert samples["roadie_queue_depth"][(("queue", "media-ingest"),)] == 0
    assert samples["roadie_workers_online"][()] == report["workers_online"]


def test_the_image_healthcheck_probe(stack):
    """docker/Dockerfile's HEALTHCHECK: a worker container asks its worker, a flow-run container the API."""
    worker = next(w for w in stack.workers if getattr(w, "health_port", None) and w.alive)
    probe = [sys.executable, "-m", "roadie.ops.probe", "--worker-url"]

    def run(url: str, api: str) -> int:
        env = {**stack.env, "PREFECT_API_URL": api, "ROADIE_PREFECT_API_URL": api}
        return subprocess.run([*probe, url], env=env, capture_output=True, timeout=60).returncode

    assert run(f"http://127.0.0.1:{worker.health_port}/health", stack.api) == 0
    nothing = f"http://127.0.0.1:{free_port()}/health"
    assert run(nothing, stack.api) == 0
    assert run(nothing, f"http://127.0.0.1:{free_port()}/api") == 1


# ---------------------------------------------------------------------- roadie serve, the Docker variant


def test_roadie_serve_runs_workers_and_stops_cleanly_on_ctrl_c(stack, tmp_path):
    env = {**stack.env, "ROADIE_PREFECT_API_URL": stack.api, "ROADIE_HOME": str(tmp_path / "serve-home")}
    serve_args = ["--workers", "1", "--port", "0", "--grace", "20"]
    with roadie_serve(tmp_path, env, *serve_args) as (proc, info, stderr_path):
        assert info["ui"] == stack.api.removesuffix("/api")
        health = httpx.get(info["health"], timeout=60).json()
        assert set(health) >= {"status", "queues"} and "media-ingest" in health["queues"]
        stack.wait_online(info["workers"])
        worker_pids = [
            proc.pid for proc in psutil.process_iter(["cmdline"]) if info["workers"][0] in (proc.info["cmdline"] or [])
        ]
        assert worker_pids
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, stderr_path.read_text()[-3000:]
        assert "stopped" in stderr_path.read_text()
        assert all(
            wait_for(lambda pid=pid: exited(pid), 10, f"worker {pid} is gone", poll_s=0.2) for pid in worker_pids
        )
        with pytest.raises(httpx.HTTPError):
            httpx.get(info["health"], timeout=5)


def test_docker_variant_registers_on_the_docker_pool(stack):
    """Last: it replaces the process deployments of the same names (the two files are alternatives)."""
    from roadie.ops.serve import deploy

    with connect(stack.api) as api:
        ensure_topology(api, docker=True, zombie_after_seconds=ZOMBIE_AFTER_S)
    env = {
        "ROADIE_IMAGE": "roadie:e2e",
        "ROADIE_DATABASE_URL": "postgresql+psycopg2://u:p@postgres:5432/roadie",
        "ROADIE_STORAGE_URL": "s3://roadie",
        "ROADIE_S3_ENDPOINT_URL": "http://minio:9000",
        "ROADIE_S3_ACCESS_KEY": "k",
        "ROADIE_S3_SECRET_KEY": "s",
        "ROADIE_DEAD_LETTER_WEBHOOK_URL": "",
        "ROADIE_DOCKER_NETWORK": "roadie",
    }
    result = deploy(stack.api, ROOT / "deployments" / "prefect.docker.yaml", ROOT, env={**stack.env, **env})
    assert result.deployed
    ingest = stack.client.request("GET", f"/deployments/{stack.client.read_deployment(INGEST).id}").json()
    assert ingest["work_pool_name"] == "roadie-docker" and ingest["work_queue_name"] == "ingest"
    job = ingest["job_variables"]
    assert job["image"] == "roadie:e2e" and job["network_mode"] == "roadie"
    assert job["env"]["ROADIE_DATABASE_URL"] == env["ROADIE_DATABASE_URL"]
    assert job["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert ingest["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/roadie"}}]

"""The production path, really run: roadie's image built (tests/docker_support.py, docker/build.py), the Prefect
Docker worker itself in a container of it, every flow run a new container of it.

What is real: the Prefect server on the host (on PostgreSQL, the session's `prefect_api`), PostgreSQL, the SeaweedFS
S3 server, the Docker engine. What comes from docker/compose.yaml: the `setup` service's command and environment
(run here in a container of the image, as compose runs it) and the `worker` service's command, socket mount and
environment. Every container uses host networking, so the services on 127.0.0.1 are reachable: the deployments'
network and image are set the way compose's `setup` sets them, from ROADIE_DOCKER_NETWORK and ROADIE_IMAGE in the
deploying environment, and a single run's memory limit through `job_variables` in its create_flow_run body.

The tests of this module run in order and share one worker: two ingests, a bad input and its dead letter, a
rollup over a date range, the worker's health check, a 60-minute upload in a container limited to 1 GiB."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from roadie.prefect_local import free_port
from roadie.settings import reload_settings
from tests import docker_support as ds
from tests.ops_support import Recorder
from tests.platform_client import FlowRun
from tests.prefect_rest import PrefectREST
from tests.support import run_sql, sine, wait_for, write_wav

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
POOL = "roadie-docker"
# The session's Prefect server has no auth string; everything else compose passes, the tests pass.
NOT_EXERCISED = {"PREFECT_API_AUTH_STRING"}
GIB = 1 << 30


class DockerStack:
    def __init__(self, api: str, pg_url: str, image: str, env: dict[str, str], hook: Recorder):
        self.api, self.pg_url, self.image, self.env, self.hook = api, pg_url, image, env, hook
        self.client = PrefectREST(api)
        self.http = httpx.Client(base_url=api, timeout=30)
        self.watch = ds.ContainerWatch()
        self.worker_name = f"roadie-test-worker-{uuid.uuid4().hex[:8]}"
        self.worker_port = free_port()
        self.runs: dict[str, FlowRun] = {}

    def sql(self, query: str, **params):
        return run_sql(self.pg_url, query, **params)

    def trigger(
        self, deployment: str, parameters: dict, idempotency_key: str | None = None, job_variables: dict | None = None
    ) -> str:
        """What the platform's API does, in plain HTTP."""
        dep = self.http.get(f"/deployments/name/{deployment}").raise_for_status().json()
        body: dict = {"parameters": parameters}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if job_variables:
            body["job_variables"] = job_variables
        response = self.http.post(f"/deployments/{dep['id']}/create_flow_run", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def infrastructure_pid(self, flow_run_id: str) -> str:
        return self.http.get(f"/flow_runs/{flow_run_id}").raise_for_status().json().get("infrastructure_pid") or ""

    def worker_logs(self) -> str:
        return ds.docker("logs", "--tail", "80", self.worker_name, check=False).stderr[-6000:]

    def assert_ran_in_its_own_container(self, run: FlowRun) -> ds.RunContainer:
        """One new container of the image for this run: non-root, host network, exited, then removed."""
        box = self.watch.wait_removed(run.id)
        assert box.image == self.image, box
        assert box.actions[:2] == ["create", "start"] and box.actions[-1] == "destroy", box.actions
        # `prefect flow-run execute` exits 0 once it has reported the run's final state, Failed included.
        assert box.exit_code == 0, box
        assert box.user == "roadie" and box.uid == ds.USER_UID, box
        assert box.network_mode == "host", box
        # The run's infrastructure id, as the worker reported it to the API, names that same container.
        assert self.infrastructure_pid(run.id).rsplit(":", 1)[-1] == box.container_id
        assert ds.inspect(box.container_id) is None  # gone
        return box

    def close(self) -> None:
        self.watch.close()
        self.http.close()
        self.client.close()


def compose_service(name: str) -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"][name]


def env_for(service: dict, values: dict[str, str]) -> dict[str, str]:
    """The service's environment, key for key, with this machine's values."""
    keys = set(service["environment"]) - NOT_EXERCISED
    missing = keys - set(values)
    assert not missing, f"the tests give no value for {missing}"
    return {key: values[key] for key in sorted(keys)}


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


@pytest.fixture(scope="module")
def image(pytestconfig):
    return ds.image(pytestconfig)


@pytest.fixture(scope="module")
def dstack(image, prefect_api: str, pg_url: str, s3_server: str) -> Iterator[DockerStack]:
    hook = Recorder()
    roadie_values = {
        "ROADIE_DATABASE_URL": pg_url,
        "ROADIE_STORAGE_URL": f"s3://roadie/docker-{uuid.uuid4().hex[:8]}",
        "ROADIE_S3_ENDPOINT_URL": s3_server,
        "ROADIE_S3_ACCESS_KEY": "roadie",
        "ROADIE_S3_SECRET_KEY": "roadie-secret",
        "ROADIE_WORK_POOL": POOL,
        "ROADIE_DEAD_LETTER_WEBHOOK_URL": f"{hook.url}/dead-letters",
    }
    values = {
        **roadie_values,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "ROADIE_IMAGE": image.tag,
        "ROADIE_DOCKER_NETWORK": "host",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    s = DockerStack(prefect_api, pg_url, image.tag, values, hook)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in roadie_values.items():  # for register_upload in this process
            mp.setenv(key, value)
        reload_settings()
        try:
            # compose's `setup` service, in a container of the image: migrate, topology, deploy the Docker variant.
            setup = compose_service("setup")
            done = ds.docker(
                "run",
                "--rm",
                "--network",
                "host",
                *env_args(env_for(setup, values)),
                image.tag,
                *setup["command"],
                check=False,
                timeout=600,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            # compose's `worker` service: its command, the Docker socket, the socket's group, host networking.
            worker = compose_service("worker")
            volumes = [arg for volume in worker["volumes"] for arg in ("-v", volume)]
            env = {**env_for(worker, values), "PREFECT_WORKER_WEBSERVER_PORT": str(s.worker_port)}
            ds.docker(
                "run",
                "-d",
                "--name",
                s.worker_name,
                "--network",
                "host",
                "--group-add",
                str(ds.socket_gid()),
                *volumes,
                *env_args(env),
                image.tag,
                *worker["command"],
            )
            wait_for(
                lambda: any(w.status == "ONLINE" for w in s.client.workers(POOL)),
                120,
                f"the worker container is not online: {s.worker_logs()}",
            )
            yield s
        finally:
            ds.docker("rm", "-f", s.worker_name, check=False)
            leftover = ds.docker(
                "ps",
                "-aq",
                "--filter",
                f"ancestor={image.tag}",
                "--filter",
                "label=io.prefect.flow-run-id",
                check=False,
            ).stdout.split()
            if leftover:
                ds.docker("rm", "-f", *leftover, check=False)
            s.close()
            hook.close()
    reload_settings()


def register(tmp_path: Path, name: str, path: Path | None = None, seconds: float = 3.0):
    from roadie.catalog.registration import register_upload

    path = path or write_wav(tmp_path / f"{name}.wav", sine(330, seconds, 48000), 48000)
    return register_upload(path, title=name, owner="docker-artist")


# ---------------------------------------------------------------------- the deployments compose's setup made


def test_setup_deployed_the_docker_variant_with_the_overrides(dstack):
    ingest = dstack.http.get("/deployments/name/media-ingest/media-ingest").raise_for_status().json()
    assert (ingest["work_pool_name"], ingest["work_queue_name"]) == (POOL, "ingest")
    job = ingest["job_variables"]
    assert job["image"] == dstack.image and job["network_mode"] == "host" and "networks" not in job
    assert job["env"]["ROADIE_DATABASE_URL"] == dstack.env["ROADIE_DATABASE_URL"]
    assert (job["mem_limit"], job["auto_remove"]) == ("2g", True)
    pool = dstack.http.get(f"/work_pools/{POOL}").raise_for_status().json()
    assert pool["type"] == "docker"


# ---------------------------------------------------------------------- ingests, each in a new container


def test_two_uploads_ingest_in_new_containers(dstack, tmp_path):
    from roadie.catalog.views import master_key
    from roadie.storage import get_storage

    regs = [register(tmp_path, f"docker-take-{i}", seconds=3.0 + i) for i in range(2)]
    triggered = {
        reg.version_id: dstack.trigger(
            "media-ingest/media-ingest",
            {"version_id": reg.version_id, "formats": ["hls_opus", "hls_aac"]},
            idempotency_key=f"media-ingest:{reg.version_id}",
        )
        for reg in regs
    }
    final = {vid: dstack.client.wait_for_flow_run(run_id, timeout_s=600) for vid, run_id in triggered.items()}
    storage = get_storage()
    boxes = []
    for vid, run in final.items():
        assert run.state_type == "COMPLETED", (run.name, run.state_message, dstack.worker_logs())
        boxes.append(dstack.assert_ran_in_its_own_container(run))
        ((status, error),) = dstack.sql("SELECT status, error FROM track_versions WHERE id = :id", id=vid)
        assert (status, error) == ("ready", None)
        rows = dstack.sql("SELECT format, status, segment_count FROM transcodes WHERE track_version_id = :id", id=vid)
        assert sorted((r.format, r.status) for r in rows) == [("hls_aac", "ready"), ("hls_opus", "ready")]
        assert all(r.segment_count >= 1 for r in rows)
        ((lufs,),) = dstack.sql("SELECT loudness_lufs FROM track_versions WHERE id = :id", id=vid)
        ((waveforms,),) = dstack.sql("SELECT count(*) FROM waveforms WHERE track_version_id = :id", id=vid)
        assert lufs is not None and waveforms >= 1
        assert storage.exists(master_key(vid))
        for fmt in ("hls_opus", "hls_aac"):
            keys = storage.list(f"{vid}/{fmt}")
            assert any(k.endswith(".m3u8") for k in keys) and len(keys) >= 2, (fmt, keys)
        dstack.runs[vid] = run
    assert len({b.container_id for b in boxes}) == 2


# ---------------------------------------------------------------------- a bad input and its dead letter


def test_invalid_input_fails_and_its_dead_letter_is_filed_from_a_container(dstack, tmp_path):
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is not a wave file\n" * 100)
    reg = register(tmp_path, "docker-bad", path=bad)
    run_id = dstack.trigger(
        "media-ingest/media-ingest",
        {"version_id": reg.version_id, "formats": ["hls_opus"]},
        idempotency_key=f"media-ingest:{reg.version_id}",
    )
    run = dstack.client.wait_for_flow_run(run_id, timeout_s=300)
    assert run.state_type == "FAILED", (run.state_name, run.state_message)
    dstack.assert_ran_in_its_own_container(run)

    rows = wait_for(
        lambda: dstack.sql(
            "SELECT flow_name, deployment_name, state, attempts FROM failed_jobs WHERE flow_run_id = :id", id=run.id
        ),
        180,
        "no failed_jobs row for the bad input",
    )
    assert [tuple(r) for r in rows] == [("media-ingest", "media-ingest", "Failed", 1)]
    ((status,),) = dstack.sql("SELECT status FROM track_versions WHERE id = :id", id=reg.version_id)
    assert status == "failed"
    # The automation started the dead-letter deployment: it too ran in a container of the image.
    letters = [
        r
        for r in dstack.client.filter_flow_runs(
            deployments={"id": {"any_": [dstack.client.deployment_id("dead-letter/dead-letter")]}}
        )
        if r.parameters.get("flow_run_id") == run.id
    ]
    assert len(letters) == 1
    letter = dstack.client.wait_for_flow_run(letters[0].id, timeout_s=120)
    assert letter.state_type == "COMPLETED", letter.state_message
    dstack.assert_ran_in_its_own_container(letter)
    posted = wait_for(
        lambda: [b for _, b in dstack.hook.requests if b.get("flow_run_id") == run.id], 60, "no webhook notification"
    )
    assert len(posted) == 1 and posted[0]["state"] == "Failed"


# ---------------------------------------------------------------------- a batch job over a date range


def test_rollup_for_a_date_range_in_a_container(dstack):
    assert len(dstack.runs) == 2, "the ingests did not run"
    tracks = [
        r.track_id
        for r in dstack.sql(
            "SELECT track_id::text AS track_id FROM track_versions WHERE id IN (:a, :b) ORDER BY created_at",
            a=next(iter(dstack.runs)),
            b=list(dstack.runs)[1],
        )
    ]
    day1, day2 = datetime(2026, 4, 20, tzinfo=UTC), datetime(2026, 4, 21, tzinfo=UTC)
    plays = [
        (tracks[0], day1),
        (tracks[0], day1 + timedelta(hours=23, minutes=59, seconds=59)),
        (tracks[1], day1 + timedelta(hours=12)),
        (tracks[1], day2 + timedelta(hours=3)),
        (tracks[0], day2 + timedelta(days=1)),
    ]  # outside the range
    for track, at in plays:
        dstack.sql(
            "INSERT INTO analytics_play (track_id, started_at, watch_ms, completed) VALUES (:t, :at, 40000, true)",
            t=track,
            at=at,
        )
    run_id = dstack.trigger("analytics-rollup/analytics-rollup", {"start": "2026-04-20", "end": "2026-04-21"})
    run = dstack.client.wait_for_flow_run(run_id, timeout_s=300)
    assert run.state_type == "COMPLETED", run.state_message
    dstack.assert_ran_in_its_own_container(run)
    rows = dstack.sql(
        "SELECT track_id::text AS track_id, day, plays FROM analytics_daily WHERE day BETWEEN "
        "'2026-04-19' AND '2026-04-23' AND track_id IN (:a, :b)",
        a=tracks[0],
        b=tracks[1],
    )
    assert {(r.track_id, r.day.isoformat()): r.plays for r in rows} == {
        (tracks[0], "2026-04-20"): 2,
        (tracks[1], "2026-04-20"): 1,
        (tracks[1], "2026-04-21"): 1,
    }


# ---------------------------------------------------------------------- the worker container's health


def test_worker_container_is_healthy_and_its_health_endpoint_answers(dstack):
    info = ds.inspect(dstack.worker_name)
    assert info["Config"]["User"] == "roadie" and info["HostConfig"]["NetworkMode"] == "host"
    assert "/var/run/docker.sock:/var/run/docker.sock" in info["HostConfig"]["Binds"]
    assert info["Config"]["Cmd"] == compose_service("worker")["command"]
    # The image's HEALTHCHECK (python -m roadie.ops.probe) at its own pace: first check after 30 s.
    health = wait_for(
        lambda: (
            (h := ds.inspect(dstack.worker_name)["State"].get("Health") or {}).get("Status") in ("healthy", "unhealthy")
            and h
        ),
        150,
        "the worker container has no health status yet",
    )
    assert health["Status"] == "healthy", health
    assert health["Log"][-1]["ExitCode"] == 0
    response = httpx.get(f"http://127.0.0.1:{dstack.worker_port}/health", timeout=10)
    assert response.status_code == 200


# ---------------------------------------------------------------------- a 60-minute upload in 1 GiB


def test_sixty_minute_upload_completes_in_a_container_limited_to_1_gib(dstack, tmp_path, pytestconfig):
    from tasks.media.ffmpeg import ffmpeg_binary

    source = tmp_path / "sixty-minutes.flac"
    subprocess.run(
        [
            ffmpeg_binary(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=3600",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=554.37:sample_rate=48000:duration=3600",
            "-filter_complex",
            "[0:a][1:a]amerge=inputs=2,tremolo=f=0.2:d=0.5,volume=0.5",
            "-c:a",
            "flac",
            str(source),
        ],
        check=True,
        timeout=600,
    )
    reg = register(tmp_path, "docker-sixty-minutes", path=source)
    started = time.monotonic()
    run_id = dstack.trigger(
        "media-ingest/media-ingest",
        {"version_id": reg.version_id, "formats": ["hls_opus"]},
        idempotency_key=f"media-ingest:{reg.version_id}",
        job_variables={"mem_limit": "1g", "memswap_limit": "1g"},
    )
    run = dstack.client.wait_for_flow_run(run_id, timeout_s=1200, poll_s=2)
    seconds = time.monotonic() - started
    box = dstack.watch.wait_removed(run.id)
    assert run.state_type == "COMPLETED", (run.state_message, box)
    dstack.assert_ran_in_its_own_container(run)
    assert box.memory_limit == GIB, box
    assert 64 << 20 < box.peak_memory <= GIB  # sampled from the container's memory cgroup while it ran
    ((status, duration),) = dstack.sql(
        "SELECT status, duration_ms FROM track_versions WHERE id = :id", id=reg.version_id
    )
    assert status == "ready" and abs(duration - 3_600_000) < 1000
    ds.report(
        pytestconfig,
        f"60-minute upload in a 1 GiB container: trigger to Completed {seconds:.0f} s, "
        f"container peak {box.peak_memory / 2**20:.0f} MiB with page cache, "
        f"{box.peak_rss / 2**20:.0f} MiB without (sampled every 0.5 s)",
    )

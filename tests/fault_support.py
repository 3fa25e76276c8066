"""The stack the fault tests break, all real and all private to them, so that stopping a part hurts no other test:
a PostgreSQL cluster (roadie's database; restarted in the distribution case), a SeaweedFS S3 server (stopped and
started again on the same port and folder), a Prefect server on a database of the shared PostgreSQL (restarted
on the same port), prefect.yaml deployed to it, and two warm process workers on roadie-process.

Also the end-state checks every case makes: the version's row and its transcodes, the objects under its prefix
(complete, or none), the staging area, temp files, failed_jobs, and the workers still serving."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from roadie import prefect_local
from roadie.ops.serve import Serving, WorkerProcess, worker_command
from roadie.settings import reload_settings
from tests import services
from tests.platform_client import FlowRun
from tests.prefect_rest import PrefectREST
from tests.support import stack_env, wait_for

ROOT = Path(__file__).resolve().parent.parent
POOL = "roadie-process"
INGEST = "media-ingest/media-ingest"
# Heartbeats come every 30 s (prefect.yaml's job env; Prefect refuses less), so the zombie window must be longer.
ZOMBIE_AFTER_S = 40
# Retries wait 2, 4, 8 s (plus jitter): about 14 s of outage is ridden out.
RETRY_BACKOFF_S = 2


class Restartable:
    """A server process started from an argument list, stopped and started again with the very same arguments
    (same port, same data folder)."""

    def __init__(self, name: str, args: list[str], log: Path, ready: Callable[[], bool], proc: subprocess.Popen):
        self.name, self.args, self.log, self.ready, self.proc = name, list(args), log, ready, proc

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def start(self, timeout_s: float = 90) -> None:
        assert not self.running
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        prefect_local.wait_until(self.ready, timeout_s, self.name, self.proc, self.log)


@dataclass
class FaultStack:
    home: Path
    api: str
    client: PrefectREST
    env: dict[str, str]
    db_url: str
    pg: Restartable
    s3: Restartable
    s3_url: str
    prefect: prefect_local.Service
    prefect_port: int
    prefect_db: str
    tmp: Path
    storage_prefix: str
    workers: list[WorkerProcess] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ processes

    def start_worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(name, worker_command(POOL, name, None), self.env, self.home / "logs" / f"{name}.log")
        worker.start()
        self.workers.append(worker)
        return worker

    def wait_online(self, names: list[str], timeout_s: float = 90) -> None:
        def online() -> bool:
            try:
                return set(names) <= {w.name for w in self.client.workers(POOL) if w.status == "ONLINE"}
            except Exception:
                return False

        try:
            wait_for(online, timeout_s, f"workers {names} not online", poll_s=0.5)
        except TimeoutError:
            logs = {w.name: w.log.read_text(errors="replace")[-1500:] for w in self.workers if w.log.exists()}
            raise TimeoutError(f"workers {names} not online: {logs}") from None

    def assert_serving(self) -> None:
        """Every worker process still alive and reported ONLINE by the server (it polls, so it takes runs)."""
        live = [w for w in self.workers if w.alive]
        assert live, "no worker left"
        self.wait_online([w.name for w in live], timeout_s=60)

    def restart_prefect(self, down_s: float = 0.0) -> None:
        self.prefect.stop()
        time.sleep(down_s)
        self.prefect = prefect_local.start_prefect_server(
            self.home / "prefect-server", port=self.prefect_port, database_url=self.prefect_db
        )

    # ------------------------------------------------------------------ database

    def engine(self) -> sa.Engine:
        from roadie.db.session import engine_for

        return engine_for(self.db_url)

    def sql(self, query: str, **params) -> list:
        with self.engine().begin() as conn:
            result = conn.execute(sa.text(query), params)
            return result.all() if result.returns_rows else []

    def roadie_backends(self, waiting_only: bool = False) -> list:
        """roadie's connections to its database, from pg_stat_activity (by datname), the caller's excluded."""
        query = (
            "SELECT pid, state, wait_event_type, query FROM pg_stat_activity WHERE datname = :db "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        if waiting_only:
            query += " AND wait_event_type = 'Lock'"
        return self.sql(query, db=sa.make_url(self.db_url).database)

    def terminate_backends(self, exclude: set[int] = frozenset()) -> list[int]:
        pids = [r.pid for r in self.roadie_backends() if r.pid not in exclude]
        for pid in pids:
            self.sql("SELECT pg_terminate_backend(:pid)", pid=pid)
        return pids

    # ------------------------------------------------------------------ runs

    def register(
        self, tmp_path: Path, name: str, seconds: float, rate: int = 44100, channels: int = 2, freq: float = 330.0
    ):
        from roadie.catalog.registration import register_upload
        from tests.support import music_like, write_wav

        wav = write_wav(tmp_path / f"{name}.wav", music_like(seconds, rate, channels), rate)
        return register_upload(wav, title=name, owner="fault-artist")

    def wait_run(self, run_id: str, timeout_s: float = 180) -> FlowRun:
        return self.client.wait_for_flow_run(run_id, timeout_s=timeout_s, poll_s=0.5)

    def run_pids(self, run_id: str) -> list[int]:
        from tests.ops_support import flow_run_pids

        return flow_run_pids(run_id)

    def retry_failed(self, flow_run_id: str) -> dict:
        """`roadie failed --retry` on the failed_jobs row of this run, as an operator would."""
        import json

        row = self.failed_job(flow_run_id)
        assert row is not None, f"no failed_jobs row for {flow_run_id}"
        cli = subprocess.run(
            [sys.executable, "-m", "roadie", "failed", "--retry", row.id, "--json"],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stderr[-3000:]
        out = json.loads(cli.stdout)
        assert out["created"], out
        return out

    def failed_job(self, flow_run_id: str):
        rows = self.sql(
            "SELECT id::text AS id, deployment_name, state, error, attempts, parameters FROM failed_jobs "
            "WHERE flow_run_id = :id",
            id=flow_run_id,
        )
        return rows[0] if rows else None

    def wait_failed_job(self, flow_run_id: str, timeout_s: float = 90):
        return wait_for(lambda: self.failed_job(flow_run_id), timeout_s, f"no failed_jobs row for {flow_run_id}")

    # ------------------------------------------------------------------ end state

    def version(self, version_id: str):
        (row,) = self.sql(
            "SELECT status, error, attempt, attempt_run_id::text AS owner, duration_ms, sample_rate, "
            "channels, loudness_lufs, loudness_range, true_peak, warnings FROM track_versions "
            "WHERE id = :id",
            id=version_id,
        )
        return row

    def transcodes(self, version_id: str) -> list:
        return self.sql(
            "SELECT format, status, segment_count, bandwidth, duration_ms, segment_prefix_key "
            "FROM transcodes WHERE track_version_id = :id ORDER BY format",
            id=version_id,
        )

    def storage(self):
        from roadie.storage import get_storage

        return get_storage()

    def keys(self, prefix: str) -> list[str]:
        return self.storage().list(prefix)

    def assert_ready_and_complete(self, version_id: str, formats: list[str]) -> dict[str, bytes]:
        """`ready`; one transcodes row per format, each ready; under `{version}/` exactly the master playlist, each
        rendition's playlist, init segment and every segment its playlist names, and the waveform; no staged
        leftovers; no temp files. Returns the objects' bytes by key (relative to the version)."""
        from tasks.media.hls import parse_master_playlist, parse_media_playlist

        v = self.version(version_id)
        assert (v.status, v.error) == ("ready", None), v
        rows = self.transcodes(version_id)
        assert [(r.format, r.status) for r in rows] == [(f, "ready") for f in sorted(formats)], rows
        storage = self.storage()
        expected = {
            f"{version_id}/master.m3u8",
            f"{version_id}/waveform/waveform.json",
            f"{version_id}/waveform/waveform.png",
        }
        for row in rows:
            playlist = parse_media_playlist(storage.get_bytes(f"{row.segment_prefix_key}/playlist.m3u8").decode())
            assert len(playlist.segments) == row.segment_count
            expected |= {
                f"{row.segment_prefix_key}/{name}"
                for name in ("playlist.m3u8", playlist.init_uri, *(uri for _, uri in playlist.segments))
            }
        keys = self.keys(version_id)
        assert sorted(keys) == sorted(expected), set(keys) ^ expected
        master = parse_master_playlist(storage.get_bytes(f"{version_id}/master.m3u8").decode())
        assert sorted(m["uri"] for m in master) == sorted(f"{f}/playlist.m3u8" for f in formats)
        ((waveforms,),) = self.sql("SELECT count(*) FROM waveforms WHERE track_version_id = :id", id=version_id)
        assert waveforms == 1
        self.assert_no_leftovers()
        return {k[len(version_id) + 1 :]: storage.get_bytes(k) for k in keys}

    def assert_nothing_published(self, version_id: str) -> None:
        assert self.keys(version_id) == []
        self.assert_no_leftovers()

    def assert_no_leftovers(self) -> None:
        """No staged objects anywhere, no working folders or files under ROADIE_TMP_DIR."""
        assert self.keys("_staging") == []
        assert sorted(p.name for p in self.tmp.iterdir()) == []


def stop_tree_quietly(service: prefect_local.Service) -> None:
    with contextlib.suppress(Exception):
        service.stop()


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str) -> Iterator[FaultStack]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.topology import ensure_topology
    from roadie.ops.serve import deploy
    from roadie.prefect_api import connect

    home = tmp_path_factory.mktemp("faults")
    tmp = home / "tmp"
    tmp.mkdir()
    started = time.monotonic()
    pg_service = services.start_postgres()
    s3_service = None
    prefect = None
    stack = None
    try:
        pg = Restartable(
            "PostgreSQL",
            pg_service.proc.args,
            pg_service.workdir / "postgres.log",
            lambda: services.postgres_reachable(pg_service.url),
            pg_service.proc,
        )
        s3_service = services.start_seaweedfs(bucket="roadie", workdir=home / "s3")
        s3 = Restartable(
            "SeaweedFS",
            s3_service.proc.args,
            home / "s3" / "weed.log",
            lambda: httpx.head(f"{s3_service.url}/roadie", timeout=2).status_code in (200, 403),
            s3_service.proc,
        )
        # roadie's database on the private cluster, which goes with it (services.scratch_database would drop it
        # through a connection pooled before the distribution case restarts the server).
        db_url = private_database(pg_service.url, "roadie_faults")
        with services.scratch_database(pg_server_url, "prefect_faults", driver="postgresql+asyncpg") as prefect_db:
            port = prefect_local.free_port()
            prefect = prefect_local.start_prefect_server(home / "prefect-server", port=port, database_url=prefect_db)
            prefix = f"faults-{uuid.uuid4().hex[:8]}"
            roadie_env = {
                **stack_env(home, db_url, s3_service.url, prefix),  # ROADIE_TMP_DIR: `tmp`
                "ROADIE_ZOMBIE_AFTER_SECONDS": str(ZOMBIE_AFTER_S),
                "ROADIE_RETRY_BACKOFF_SECONDS": str(RETRY_BACKOFF_S),
                "ROADIE_PREFECT_API_URL": prefect.url,
            }
            env = {k: v for k, v in os.environ.items() if not k.startswith("ROADIE_")}
            env.update(roadie_env)
            env.update(
                {
                    "PREFECT_API_URL": prefect.url,
                    "PREFECT_HOME": str(home / "prefect"),
                    "PREFECT_WORKER_QUERY_SECONDS": "1",
                    "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                }
            )
            client = PrefectREST(prefect.url)
            stack = FaultStack(
                home, prefect.url, client, env, db_url, pg, s3, s3_service.url, prefect, port, prefect_db, tmp, prefix
            )
            with pytest.MonkeyPatch.context() as mp, temporary_settings(updates={PREFECT_API_URL: prefect.url}):
                for key in [k for k in os.environ if k.startswith("ROADIE_")]:
                    mp.delenv(key)
                for key, value in roadie_env.items():
                    mp.setenv(key, value)
                mp.setenv("PREFECT_API_URL", prefect.url)
                reload_settings()
                try:
                    with connect(prefect.url) as api:
                        ensure_topology(api, docker=False, zombie_after_seconds=ZOMBIE_AFTER_S)
                    deploy(prefect.url, env=env)
                    for i in (1, 2):
                        stack.start_worker(f"fault-worker-{i}-{uuid.uuid4().hex[:4]}")
                    stack.wait_online([w.name for w in stack.workers])
                    print(f"fault stack up in {time.monotonic() - started:.1f} s")
                    yield stack
                finally:
                    Serving(prefect.url, stack.workers).stop(grace_s=15, say=print)  # drain, wait, kill
                    client.close()
                    stack.prefect.stop()
            from roadie.db.session import engine_for

            engine_for(db_url).dispose()
    finally:
        reload_settings()
        if s3_service is not None:
            if stack is not None:
                stack.s3.stop()
            s3_service.stop()
        if stack is not None:
            stack.pg.stop(signal.SIGINT)
        stop_tree_quietly(pg_service)


def private_database(server_url: str, name: str) -> str:
    from roadie.db.session import upgrade

    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    return url


class RowLock:
    """A transaction of the test's own that holds a lock roadie's next write needs, until released."""

    def __init__(self, stack: FaultStack, *statements: str, **params):
        self.engine = sa.create_engine(stack.db_url, poolclass=sa.pool.NullPool)
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        for statement in statements:
            self.conn.execute(sa.text(statement), params)
        ((self.pid,),) = self.conn.execute(sa.text("SELECT pg_backend_pid()")).all()

    def release(self) -> None:
        try:
            self.tx.rollback()
            self.conn.close()
        except Exception:  # the connection may have died with the server
            pass
        self.engine.dispose()


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread

"""The fast start of REST-triggered runs (roadie serve's warm worker and its zygote): functional checks only.
How fast it is lives in bench/api_latency.py.

- serve starts the warm worker by default (ROADIE_WORKER_WARM=false: plain `prefect worker start`) and polls often;
- the zygote forks a child per request, in a session of its own, and passes on its exit code, a signal's too;
- against a real Prefect server, runs of a deployment started by the warm worker: complete, fail as Failed, end
  Crashed when their process is killed, and Cancelled when cancelled; all of them forked, none cold.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from roadie.ops.serve import WorkerProcess, exited, split_by_presence, worker_command, worker_env
from roadie.ops.warm_worker import flow_modules
from roadie.ops.zygote import changed_since
from roadie.prefect_api import connect
from tests.prefect_rest import PrefectREST
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- serve's worker command and environment


def test_serve_starts_the_warm_worker_unless_told_not_to(monkeypatch):
    from roadie.settings import reload_settings

    monkeypatch.delenv("ROADIE_WORKER_WARM", raising=False)
    reload_settings()
    cmd = worker_command("roadie-process", "w1", 3)
    assert cmd[:3] == [sys.executable, "-m", "roadie.ops.warm_worker"]
    assert cmd[cmd.index("--pool") + 1] == "roadie-process" and cmd[cmd.index("--type") + 1] == "process"
    assert cmd[cmd.index("--name") + 1] == "w1" and cmd[cmd.index("--limit") + 1] == "3"
    monkeypatch.setenv("ROADIE_WORKER_WARM", "false")
    reload_settings()
    try:
        cold = worker_command("roadie-process", "w1", None)
    finally:
        monkeypatch.delenv("ROADIE_WORKER_WARM")
        reload_settings()
    assert cold[0].endswith("prefect") and cold[1:3] == ["worker", "start"] and "--limit" not in cold


def test_workers_poll_often_unless_configured(monkeypatch):
    env = worker_env("http://api", {"PATH": "/bin"})
    assert env["PREFECT_API_URL"] == "http://api" and float(env["PREFECT_WORKER_QUERY_SECONDS"]) <= 1
    assert worker_env("http://api", {"PREFECT_WORKER_QUERY_SECONDS": "7"})["PREFECT_WORKER_QUERY_SECONDS"] == "7"


def test_the_zygote_preloads_every_deployed_flow_module():
    present, _ = split_by_presence(ROOT / "prefect.yaml", ROOT)
    modules = flow_modules(ROOT)
    assert "flows.ingest" in modules and len(modules) <= len(present)
    assert all((ROOT / (m.replace(".", "/") + ".py")).exists() for m in modules)


def test_the_zygote_preloads_the_libraries_of_a_run_and_stays_single_threaded():
    """After the preload, the analysis imports nothing heavy in the forked run, and the zygote still has one
    thread (native ones counted: BLAS pools too), so it may fork."""
    probe = (
        "import json, sys; from roadie.ops.zygote import preload, native_threads, LIBRARY_MODULES; "
        "failed = preload(['flows.ingest']); "
        "print(json.dumps({'failed': failed, 'threads': native_threads(), "
        "'missing': [m for m in LIBRARY_MODULES if m not in sys.modules]}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"failed": [], "threads": 1, "missing": []}


def test_a_changed_source_file_is_noticed(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("x = 1\n")
    files = {str(path): os.stat(path).st_mtime}
    assert changed_since(files) is None
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert changed_since(files) == str(path)
    path.unlink()
    assert changed_since(files) == str(path)


# ---------------------------------------------------------------------- the zygote on its own


class ZygoteProcess:
    def __init__(self, tmp_path: Path):
        self.path = str(tmp_path / "z.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roadie.ops.zygote", self.path],
            stdin=subprocess.PIPE,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: os.path.exists(self.path) or self.proc.poll() is not None, 120, "zygote not ready")
        assert self.proc.poll() is None, self.proc.stderr.read()

    def request(self, env: dict[str, str], cwd: Path) -> tuple[socket.socket, LineReader]:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        conn.sendall(json.dumps({"env": env, "cwd": str(cwd)}).encode() + b"\n")
        return conn, LineReader(conn)


class LineReader:
    def __init__(self, conn: socket.socket):
        self.file = conn.makefile("rb")

    def next(self) -> dict:
        conn_line = self.file.readline()
        assert conn_line, "the zygote closed the connection"
        return json.loads(conn_line)


def test_the_zygote_forks_runs_and_passes_on_their_exit_codes(tmp_path):
    zygote = ZygoteProcess(tmp_path)
    try:
        # No valid flow run id: Prefect's engine says so and exits 1, as `python -m prefect.engine` does.
        env = {**os.environ, "PREFECT__FLOW_RUN_ID": "not-a-uuid"}
        _, replies = zygote.request(env, tmp_path)
        pid = replies.next()["pid"]
        assert pid != zygote.proc.pid
        assert replies.next() == {"exit": 1}

        # A run that cannot reach its API keeps retrying: it has a session of its own, and SIGKILL shows as -9.
        closed_port = socket.socket()
        closed_port.bind(("127.0.0.1", 0))
        env = {
            **os.environ,
            "PREFECT__FLOW_RUN_ID": str(uuid.uuid4()),
            "PREFECT_API_URL": f"http://127.0.0.1:{closed_port.getsockname()[1]}/api",
        }
        _, replies = zygote.request(env, tmp_path)
        pid = replies.next()["pid"]
        wait_for(lambda: Path(psutil.Process(pid).cwd()).resolve() == tmp_path.resolve(), 10, "not in the run's cwd")
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid
        os.killpg(pid, signal.SIGKILL)
        assert replies.next() == {"exit": -signal.SIGKILL}
        closed_port.close()
    finally:
        zygote.proc.stdin.close()  # the worker went away: the zygote exits
        assert zygote.proc.wait(30) == 0
    assert not os.path.exists(zygote.path)


# ---------------------------------------------------------------------- the warm worker against a real server

FLOWS = """
import time

from prefect import flow


@flow(name="latency-ok")
def ok(x: int = 1) -> int:
    return x + 1


@flow(name="latency-boom")
def boom() -> None:
    raise ValueError("boom on purpose")


@flow(name="latency-sleepy")
def sleepy(seconds: float = 120) -> None:
    time.sleep(seconds)
"""


@pytest.fixture(scope="module")
def warm_pool(prefect_api: str, tmp_path_factory):
    """A process pool of its own, three deployments of a flow file on disk, and one warm worker polling it."""
    from deployments.topology import ensure_pool

    code = tmp_path_factory.mktemp("latency-flows")
    (code / "latency_flows.py").write_text(FLOWS)
    pool = f"roadie-latency-{uuid.uuid4().hex[:6]}"
    client = PrefectREST(prefect_api)
    with connect(prefect_api) as prefect:  # roadie's own setup speaks through Prefect's client
        ensure_pool(prefect, pool, "process", "test_api_latency")
    deployments = {}
    for fn, name in (("ok", "latency-ok"), ("boom", "latency-boom"), ("sleepy", "latency-sleepy")):
        flow_id = client.request("POST", "/flows/", json={"name": name}).json()["id"]
        deployments[fn] = client.request(
            "POST",
            "/deployments/",
            json={
                "name": fn,
                "flow_id": flow_id,
                "entrypoint": f"latency_flows.py:{fn}",
                "path": str(code),
                "work_pool_name": pool,
                "enforce_parameter_schema": False,
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(code)}}],
            },
        ).json()["id"]
    name = f"latency-{uuid.uuid4().hex[:6]}"
    env = worker_env(prefect_api, {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "0.5"})
    worker = WorkerProcess(name, worker_command(pool, name, None, warm=True), env, code / "worker.log")
    worker.start()
    try:
        wait_for(
            lambda: any(w.status == "ONLINE" for w in client.workers(pool)) or not worker.alive,
            120,
            "the warm worker did not come online",
        )
        assert worker.alive, worker.log.read_text()[-3000:]
        wait_for(lambda: '"ready"' in worker.log.read_text(), 120, "the zygote did not get ready")
        yield client, deployments, worker
    finally:
        worker.drain()
        deadline = time.monotonic() + 30
        while worker.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        worker.kill()
        client.close()


def run_of(client: PrefectREST, deployment_id: str, parameters: dict | None = None) -> str:
    return client.request(
        "POST", f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters or {}}
    ).json()["id"]


def final_state(client: PrefectREST, run_id: str, timeout_s: float = 120):
    return wait_for(lambda: (r := client.read_flow_run(run_id)).is_final and r, timeout_s, f"run {run_id} not final")


def infrastructure_pid(client: PrefectREST, run_id: str) -> int:
    return int(
        wait_for(
            lambda: client.request("GET", f"/flow_runs/{run_id}").json()["infrastructure_pid"],
            30,
            "no infrastructure pid",
        )
    )


def forked(worker: WorkerProcess, run_id: str) -> bool:
    return f"Flow run {run_id} forked from the warm interpreter" in worker.log.read_text()


def test_a_run_completes_from_a_forked_process(warm_pool):
    client, deployments, worker = warm_pool
    run_id = run_of(client, deployments["ok"], {"x": 41})
    run = final_state(client, run_id)
    assert run.state_type == "COMPLETED", run
    assert forked(worker, run_id), worker.log.read_text()[-3000:]
    assert "starts the ordinary way" not in worker.log.read_text()
    assert "Process exited with status code" not in worker.log.read_text()


def test_a_failing_run_ends_failed(warm_pool):
    client, deployments, worker = warm_pool
    run_id = run_of(client, deployments["boom"])
    run = final_state(client, run_id)
    assert run.state_type == "FAILED", run
    assert forked(worker, run_id)
    assert "boom on purpose" in worker.log.read_text()  # the run's output reaches the worker's log


def test_a_killed_run_ends_crashed(warm_pool):
    client, deployments, worker = warm_pool
    run_id = run_of(client, deployments["sleepy"])
    run = wait_for(lambda: (r := client.read_flow_run(run_id)).state_type == "RUNNING" and r, 120, "not running")
    pid = infrastructure_pid(client, run_id)
    assert forked(worker, run_id)
    os.kill(pid, signal.SIGKILL)
    run = final_state(client, run_id, 60)
    assert run.state_type == "CRASHED", run
    assert "exited with status code: -9" in worker.log.read_text()


def test_a_cancelled_run_ends_cancelled(warm_pool):
    client, deployments, _worker = warm_pool
    run_id = run_of(client, deployments["sleepy"])
    wait_for(lambda: client.read_flow_run(run_id).state_type == "RUNNING", 120, "not running")
    pid = infrastructure_pid(client, run_id)
    client.request(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
    )
    run = final_state(client, run_id, 90)
    assert run.state_type == "CANCELLED", run
    wait_for(lambda: exited(pid), 30, "the run's process lives on")

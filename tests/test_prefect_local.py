"""Which database the local Prefect server keeps its state in (roadie.prefect_local.prefect_database_url):
PostgreSQL beside roadie's own data when roadie is on PostgreSQL, SQLite only when roadie itself is on SQLite, and
`roadie serve` says so when it is left on SQLite. Real PostgreSQL, a real server started by a real `roadie serve`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import sqlalchemy as sa

from roadie import prefect_local
from roadie.ops.serve import warn_about_sqlite
from roadie.prefect_local import database_kind, prefect_database_url, running_server_database
from roadie.settings import reload_settings
from tests import services
from tests.ops_support import roadie_serve


@pytest.fixture
def settings_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROADIE_HOME", str(tmp_path / "home"))
    for name in ("ROADIE_PREFECT_DATABASE_URL", "ROADIE_PREFECT_API_URL", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    reload_settings()


def database_exists(server_url: str, name: str) -> bool:
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as conn:
            return (
                conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is not None
            )
    finally:
        engine.dispose()


def test_roadie_on_sqlite_keeps_prefect_on_sqlite(settings_env, tmp_path):
    settings_env.setenv("ROADIE_DATABASE_URL", f"sqlite:///{tmp_path / 'roadie.db'}")
    reload_settings()
    assert prefect_database_url() is None
    assert database_kind(None) == "sqlite"


def test_an_explicit_prefect_database_wins(settings_env, pg_server_url):
    explicit = "postgresql+asyncpg://someone@db.example:5432/prefect_state"
    settings_env.setenv("ROADIE_DATABASE_URL", pg_server_url)
    settings_env.setenv("ROADIE_PREFECT_DATABASE_URL", explicit)
    reload_settings()
    assert prefect_database_url() == explicit
    assert database_kind(explicit) == "postgresql"


def test_roadie_on_postgres_puts_prefect_in_a_database_beside_it(settings_env, pg_server_url):
    with services.scratch_database(pg_server_url, "roadie_pl") as roadie_url:
        name = sa.make_url(roadie_url).database
        settings_env.setenv("ROADIE_DATABASE_URL", roadie_url)
        reload_settings()
        url = sa.make_url(prefect_database_url())
        assert (url.drivername, url.database, url.host, url.port) == (
            "postgresql+asyncpg",
            f"{name}_prefect",
            sa.make_url(roadie_url).host,
            sa.make_url(roadie_url).port,
        )
        assert database_exists(pg_server_url, f"{name}_prefect")
        assert sa.make_url(prefect_database_url()) == url  # a second call reuses it
    # scratch_database drops the Prefect database with its own
    assert not database_exists(pg_server_url, f"{name}_prefect")


def test_serve_warns_when_prefect_is_on_sqlite(settings_env, tmp_path, pg_server_url):
    said: list[str] = []
    home = tmp_path / "home" / "prefect"
    home.mkdir(parents=True)
    (home / "server.database").write_text("sqlite")
    settings_env.setenv("ROADIE_DATABASE_URL", f"sqlite:///{tmp_path / 'roadie.db'}")
    reload_settings()
    assert running_server_database() == "sqlite"
    warn_about_sqlite(True, said.append)
    assert len(said) == 1 and "ROADIE_DATABASE_URL" in said[0] and "PostgreSQL" in said[0]

    said.clear()  # roadie moved to PostgreSQL, but the server started earlier is still on SQLite
    settings_env.setenv("ROADIE_DATABASE_URL", pg_server_url)
    reload_settings()
    warn_about_sqlite(False, said.append)
    assert len(said) == 1 and "roadie server stop" in said[0]

    said.clear()
    (home / "server.database").write_text("postgresql")
    warn_about_sqlite(False, said.append)
    assert said == []


def test_roadie_serve_on_postgres_keeps_prefect_state_there(tmp_path, pg_server_url):
    """A real `roadie serve` with roadie on PostgreSQL: its Prefect server's deployments are rows of
    `<roadie db>_prefect`, and it gives no SQLite warning."""
    with services.scratch_database(pg_server_url, "roadie_serve", migrate=True) as roadie_url:
        name = sa.make_url(roadie_url).database
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PREFECT_API_URL", "ROADIE_PREFECT_API_URL", "ROADIE_PREFECT_DATABASE_URL")
        }
        env.update(
            {
                "ROADIE_DATABASE_URL": roadie_url,
                "ROADIE_HOME": str(tmp_path / "home"),
                "ROADIE_PREFECT_LOCAL_PORT": str(prefect_local.free_port()),
                "ROADIE_STORAGE_URL": (tmp_path / "storage").as_uri(),
            }
        )
        serve_args = ["--workers", "1", "--no-health", "--grace", "5"]
        with roadie_serve(tmp_path, env, *serve_args) as (proc, _info, stderr_path):
            prefect_db = sa.make_url(roadie_url).set(database=f"{name}_prefect")
            engine = sa.create_engine(prefect_db)
            with engine.connect() as conn:
                deployed = set(conn.execute(sa.text("SELECT name FROM deployment")).scalars())
            engine.dispose()
            assert "media-ingest" in deployed
            os.kill(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=90) == 0, stderr_path.read_text()[-3000:]
        said = stderr_path.read_text()
        assert "SQLite" not in said, said[-3000:]
        assert not (Path(tmp_path / "home" / "prefect" / "prefect.db")).exists()

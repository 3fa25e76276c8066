"""Real services for the suite, started once per session: PostgreSQL, a SeaweedFS S3 server, a Prefect server.

PostgreSQL: ROADIE_TEST_DATABASE_URL if given, else the server on 127.0.0.1:5432 if one answers, else a
throwaway cluster. Each session works in a database of its own, dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from roadie import prefect_local
from roadie.settings import reload_settings
from tests import services

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
LOCAL_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    given = os.environ.get("ROADIE_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if services.postgres_reachable(LOCAL_PG):
        yield LOCAL_PG
        return
    server = services.start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    with services.scratch_database(pg_server_url, "roadie_test", migrate=True) as url:
        yield url


@pytest.fixture
def pg(pg_url: str) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    engine = sa.create_engine(pg_url)
    conn = engine.connect()
    outer = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        conn.close()
        engine.dispose()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    server = services.start_seaweedfs(bucket="roadie")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str) -> Iterator[str]:
    """One real Prefect server for the session, on PostgreSQL as in production; flows run in-process report to it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    with services.scratch_database(pg_server_url, "prefect_test", driver="postgresql+asyncpg") as database:
        server = prefect_local.start_prefect_server(home, database_url=database)
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.url}), pytest.MonkeyPatch.context() as env:
                env.setenv("PREFECT_API_URL", server.url)  # for the subprocesses tests start
                from roadie.limits import ensure_limits

                ensure_limits()  # flows take their slots with strict=True
                yield server.url
        finally:
            server.stop()


@pytest.fixture(params=["s3", "file"])
def roadie_env(request, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """roadie configured on real PostgreSQL and either the S3 server or a local folder, isolated per test."""
    monkeypatch.setenv("ROADIE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROADIE_DATABASE_URL", pg_url)
    monkeypatch.setenv("ROADIE_TMP_DIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_server")
        monkeypatch.setenv("ROADIE_STORAGE_URL", f"s3://roadie/t-{uuid.uuid4().hex[:8]}")
        monkeypatch.setenv("ROADIE_S3_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("ROADIE_S3_ACCESS_KEY", "roadie")
        monkeypatch.setenv("ROADIE_S3_SECRET_KEY", "roadie-secret")
    else:
        monkeypatch.setenv("ROADIE_STORAGE_URL", (tmp_path / "storage").as_uri())
    settings = reload_settings()
    yield settings
    monkeypatch.undo()  # the test's own changes too, so that no setting leaks into the next test's cache
    reload_settings()

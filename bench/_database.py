"""The PostgreSQL database a batch benchmark runs in: ROADIE_BENCH_DATABASE_URL as given (left in place), or a
fresh database on 127.0.0.1:5432 that is created, migrated and dropped around the run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOCAL_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@contextmanager
def bench_database(prefix: str) -> Iterator[str]:
    from roadie.db.session import upgrade

    given = os.environ.get("ROADIE_BENCH_DATABASE_URL")
    if given:
        upgrade(given)
        yield given
        return
    from tests.services import scratch_database

    with scratch_database(LOCAL_SERVER, f"roadie_bench_{prefix}", migrate=True) as url:
        yield url


def load(url: str, statements: list[tuple[str, dict]]) -> None:
    """Bulk-load generated rows. FK triggers are skipped (session_replication_role=replica, the pg_restore
    trick): the generator only draws ids from the tables it has just filled, so every reference is valid."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        conn.execute(sa.text("SET LOCAL work_mem = '256MB'"))
        for statement, params in statements:
            conn.execute(sa.text(statement), params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        conn.execute(sa.text("CHECKPOINT"))
    engine.dispose()


def user_rows(users: int) -> list[tuple[str, dict]]:
    """`load` statements for `users` users and the temp table user_ix (n -> id) the other rows draw users from."""
    return [
        (
            "INSERT INTO users (id, username, lossless_enabled, created_at) "
            "SELECT gen_random_uuid(), 'bench-user-' || g, false, now() FROM generate_series(1, :n) g",
            {"n": users},
        ),
        ("CREATE TEMP TABLE user_ix AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM users", {}),
    ]


def machine(url: str) -> str:
    import platform

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("SHOW server_version")).scalar_one()
    engine.dispose()
    return f"{platform.machine()}, {os.cpu_count()} cores, PostgreSQL {version}"

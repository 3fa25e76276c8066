"""Engines and sessions. One engine per URL per process; SQLite gets WAL and foreign keys."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from roadie.settings import get_settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(
            dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry
        ) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def get_engine() -> Engine:
    return engine_for(get_settings().database_url)


def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | None = None) -> Config:
    # deferred, like every Alembic import here: Alembic costs 0.2-0.5 s and most CLI calls never migrate
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def script_heads() -> frozenset[str]:
    """The head revisions of the migration scripts, read from their `revision` and `down_revision` lines (ast, not
    Alembic: importing Alembic and loading every script costs more than the whole check)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        values = {}
        for node in ast.parse(script.read_text(encoding="utf-8")).body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("revision", "down_revision")
            ):
                values[node.targets[0].id] = ast.literal_eval(node.value)
        if "revision" not in values:
            continue
        revisions.add(values["revision"])
        down = values.get("down_revision")
        parents.update((down,) if isinstance(down, str) else (down or ()))
    return frozenset(revisions - parents)


def database_heads(url: str | None = None) -> frozenset[str] | None:
    """The revisions the database is at (alembic_version), or None when it has no schema yet or cannot say."""
    try:
        with engine_for(url or get_settings().database_url).connect() as connection:
            return frozenset(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except SQLAlchemyError:
        return None


def upgrade_if_behind(url: str | None = None) -> None:
    """`upgrade` to the heads unless the database is there already: one SELECT on every CLI call, and Alembic
    (its import and scripts: 0.2-0.5 s on 2 busy cores) only when there is something to migrate or the check cannot
    tell."""
    if database_heads(url) != script_heads():
        upgrade(url)


def upgrade(url: str | None = None, revision: str = "heads") -> None:
    from alembic import command  # noqa: PLC0415  (deferred: Alembic, see alembic_config)

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command  # noqa: PLC0415  (deferred: Alembic, see alembic_config)

    command.downgrade(alembic_config(url), revision)

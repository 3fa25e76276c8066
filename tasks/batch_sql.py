"""What the set-based batch jobs (rollup, distribution) share: their transaction, their lock, typed binds.

The SQL is written once for PostgreSQL and SQLite (both have ON CONFLICT DO UPDATE, FILTER and window functions);
the few dialect differences are isolated here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from roadie.db.session import session_scope

UTC = UTC

# Typed binds: SQLite keeps dates and timestamps as text, and only a typed bind renders them in that format.
TIMESTAMP = sa.DateTime(timezone=True)
DAY = sa.Date()


def sql(statement: str, **types: sa.types.TypeEngine) -> sa.TextClause:
    """A text statement whose named binds carry SQL types (`sql("… :lo …", lo=TIMESTAMP)`); types for names
    the statement does not use are ignored, so one dict of types can serve every statement of a job."""
    used = [name for name in types if re.search(rf"(?<![:\w]):{name}\b", statement)]
    return sa.text(statement).bindparams(*(sa.bindparam(name, type_=types[name]) for name in used))


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def day_window(day: date) -> tuple[datetime, datetime]:
    """The half-open UTC window [day 00:00, day+1 00:00): nothing lost at 23:59:59.999."""
    start = utc_midnight(day)
    return start, start + timedelta(days=1)


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


@contextmanager
def transaction(session: Session | None) -> Iterator[Session]:
    """One unit of work. Without a session: a new one, committed on success. With the caller's session: a
    transaction (or a savepoint, if one is open) inside it, so an error leaves the caller's work intact."""
    if session is None:
        with session_scope() as own:
            yield own
        return
    with session.begin_nested() if session.in_transaction() else session.begin():
        yield session


def lock_key(session: Session, namespace: int, key: int, sqlite_table: str) -> None:
    """Serialise runs on the same key until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: one writer at a time anyway, but a transaction that
    reads before it writes can fail to upgrade its snapshot; a no-op write first takes the write lock up front.
    """
    if is_postgres(session):
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": namespace, "key": key})
    else:
        session.execute(sa.text(f"UPDATE {sqlite_table} SET rowid = rowid WHERE 0"))


def new_uuid_sql(session: Session) -> str:
    """A fresh uuid as SQL, in the storage format SQLAlchemy's Uuid type uses on each backend."""
    return "gen_random_uuid()" if is_postgres(session) else "lower(hex(randomblob(16)))"


def one_row(session: Session, statement: sa.TextClause, params: dict[str, Any]) -> dict[str, Any]:
    """The single row of an aggregate query as a dict, NULL sums (no rows) as 0."""
    row = session.execute(statement, params).mappings().one()
    return {k: (0 if v is None else v) for k, v in row.items()}

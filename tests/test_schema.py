"""Migrations run on SQLite and PostgreSQL, and the migrated schema is exactly the models'."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from roadie.db.models import Base
from roadie.db.session import downgrade, upgrade


def _diff(url: str) -> list:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return diff


def test_postgres_schema_matches_models(pg_url):
    assert _diff(pg_url) == []


def test_sqlite_upgrade_downgrade_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'roadie.db'}"
    upgrade(url)
    assert _diff(url) == []
    downgrade(url, "base")
    tables = sa.inspect(sa.create_engine(url)).get_table_names()
    assert tables == ["alembic_version"]
    upgrade(url)
    assert "track_versions" in sa.inspect(sa.create_engine(url)).get_table_names()


def test_postgres_downgrade_and_back(pg_server_url):
    from tests.services import scratch_database

    with scratch_database(pg_server_url, "roadie_mig", migrate=True) as url:
        downgrade(url, "base")
        upgrade(url)
        assert _diff(url) == []


@pytest.mark.parametrize("status", ["done", "READY", ""])
def test_status_is_constrained(pg, status):
    from roadie.db.models import Asset, Track, TrackVersion, User

    user = User(username=f"u-{status}")
    pg.add(user)
    pg.flush()
    asset = Asset(bucket="b", key=f"k-{status}", size_bytes=1)
    track = Track(owner_user_id=user.id, title="t")
    pg.add_all([asset, track])
    pg.flush()
    pg.add(TrackVersion(track_id=track.id, original_asset_id=asset.id, status=status))
    with pytest.raises(sa.exc.IntegrityError):
        pg.flush()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rekeying_analytics_daily_keeps_its_rows(backend, tmp_path, pg_server_url):
    """0005 rebuilds analytics_daily's keys (a table copy on SQLite): the stored stats must survive it."""
    import contextlib
    import uuid
    from datetime import date

    from tests.services import scratch_database

    if backend == "sqlite":
        database = contextlib.nullcontext(f"sqlite:///{tmp_path / 'roadie.db'}")
    else:
        database = scratch_database(pg_server_url, "roadie_mig0005")
    with database as url:
        upgrade(url, "0003")
        upgrade(url, "0004")
        engine = sa.create_engine(url)
        user_id, track_id = uuid.uuid4(), uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO users (id, username, lossless_enabled, created_at) "
                    "VALUES (:id, 'u', false, CURRENT_TIMESTAMP)"
                ),
                {"id": user_id.hex},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO tracks (id, owner_user_id, title, created_at) "
                    "VALUES (:id, :owner, 't', CURRENT_TIMESTAMP)"
                ),
                {"id": track_id.hex, "owner": user_id.hex},
            )
            conn.execute(
                sa.text("INSERT INTO analytics_daily VALUES (:t, :d, 5, 4, 3, 2, 1, 0)"),
                {"t": track_id.hex, "d": date(2026, 11, 1)},
            )
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT plays, uniques, completions, likes, reposts, downloads FROM analytics_daily")
            ).all()
        engine.dispose()
        assert [tuple(r) for r in rows] == [(5, 4, 3, 2, 1, 0)]
        assert _diff(url) == []

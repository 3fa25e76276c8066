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
    from roadie.services import scratch_database

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

"""Asset rows: one per stored object (bucket, key), updated in place when the object is rewritten."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from roadie.db.models import Asset
from roadie.storage import Storage, content_type_for


def upsert_asset(session: Session, storage: Storage, key: str, size_bytes: int, sha256: str | None = None) -> Asset:
    asset = session.scalar(select(Asset).where(Asset.bucket == storage.bucket, Asset.key == key))
    if asset is None:
        asset = Asset(
            bucket=storage.bucket, key=key, size_bytes=size_bytes, sha256=sha256, content_type=content_type_for(key)
        )
        session.add(asset)
    else:
        asset.size_bytes, asset.sha256 = size_bytes, sha256
    session.flush()
    return asset

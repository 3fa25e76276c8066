"""Registration of an upload: what the API does before it triggers an ingest (store the original, create its
user, track, asset and `pending` version rows). The version's later states are roadie.catalog's transitions."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from roadie.db.models import Asset, Track, TrackVersion, User
from roadie.db.session import session_scope
from roadie.errors import InvalidInput
from roadie.storage import Storage, content_type_for, get_storage, join_key, safe_filename

DEFAULT_OWNER = "demo-artist"


@dataclass(frozen=True)
class Registration:
    version_id: str
    track_id: str
    asset_id: str
    asset_key: str
    storage_url: str


def file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def ensure_user(session: Session, username: str, lossless: bool = False) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, lossless_enabled=lossless)
        session.add(user)
        session.flush()
    elif lossless and not user.lossless_enabled:
        user.lossless_enabled = True
    return user


def register_upload(
    path: Path,
    *,
    title: str | None = None,
    owner: str | None = None,
    lossless: bool = False,
    storage: Storage | None = None,
) -> Registration:
    """What the API does before it triggers an ingest: store the original, create its rows (`pending`)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file")
    storage = storage or get_storage()
    sha256, size = file_digest(path)
    asset_id = uuid.uuid4()
    key = join_key("originals", str(asset_id), safe_filename(path.name))
    storage.put_file(key, path, content_type_for(path.name))
    try:
        with session_scope() as session:
            user = ensure_user(session, owner or DEFAULT_OWNER, lossless=lossless)
            asset = Asset(
                id=asset_id,
                bucket=storage.bucket,
                key=key,
                content_type=content_type_for(path.name),
                size_bytes=size,
                sha256=sha256,
            )
            track = Track(owner_user_id=user.id, title=(title or path.stem)[:500])
            session.add_all([asset, track])
            session.flush()
            version = TrackVersion(track_id=track.id, original_asset_id=asset.id, status="pending", warnings=[])
            session.add(version)
            session.flush()
            return Registration(str(version.id), str(track.id), str(asset.id), key, storage.url)
    except BaseException:
        storage.delete([key])  # no orphan object when the rows could not be written
        raise

"""Read-only views of the catalogue: a version's state as the CLI and API report it, its ready renditions and
master playlist key, and the job of a reprocessing flow. Nothing here changes a version (roadie.catalog does)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from roadie.catalog.inputs import parse_uuid
from roadie.db.models import Asset, Report, Track, TrackVersion, Transcode, Waveform
from roadie.db.session import session_scope
from roadie.errors import InvalidInput
from roadie.storage import Storage, get_storage, join_key


@dataclass(frozen=True)
class VersionJob:
    """What an ingest run needs to know about one version."""

    version_id: str
    track_id: str
    original_key: str
    original_name: str
    formats: tuple[str, ...]
    warnings: tuple[str, ...]
    attempt: int = 0


def master_key(version_id: str) -> str:
    """The multivariant playlist listing the version's ready renditions."""
    return join_key(version_id, "master.m3u8")


def ready_transcodes(version_id: str) -> list[Transcode]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Transcode).where(
                    Transcode.track_version_id == parse_uuid(version_id), Transcode.status == "ready"
                )
            )
        )


def describe_version(version_id: str, storage: Storage | None = None) -> dict[str, Any]:
    """The state of one version as the CLI and API report it."""
    storage = storage or get_storage()
    vid = parse_uuid(version_id)
    with session_scope() as session:
        version = session.get(TrackVersion, vid)
        if version is None:
            raise InvalidInput(f"track version {version_id} does not exist")
        transcodes: dict[str, Any] = {}
        for t in session.scalars(select(Transcode).where(Transcode.track_version_id == vid).order_by(Transcode.format)):
            entry: dict[str, Any] = {"status": t.status}
            if t.status == "ready" and t.segment_prefix_key:
                keys = storage.list(t.segment_prefix_key)
                entry.update(
                    playlist_key=join_key(t.segment_prefix_key, "playlist.m3u8"),
                    init_key=join_key(t.segment_prefix_key, "init.mp4"),
                    segment_keys=sorted(k for k in keys if k.endswith(".m4s")),
                    duration_s=(t.duration_ms or 0) / 1000,
                    bandwidth=t.bandwidth,
                )
            if t.error:
                entry["error"] = t.error
            transcodes[t.format] = entry
        master = master_key(version_id)
        return {
            "version_id": str(version.id),
            "track_id": str(version.track_id),
            "status": version.status,
            "error": version.error,
            "storage_url": storage.url,
            "master_key": master if version.status == "ready" and storage.exists(master) else None,
            "duration_s": (version.duration_ms or 0) / 1000 if version.duration_ms else None,
            "sample_rate": version.sample_rate,
            "channels": version.channels,
            "loudness": {
                "integrated_lufs": version.loudness_lufs,
                "loudness_range_lu": version.loudness_range,
                "true_peak_dbtp": version.true_peak,
            },
            "transcodes": transcodes,
            "waveform": _waveform_keys(session, vid),
            "artwork": _artwork_keys(session, version.track_id),
            "duplicate_reports": _duplicate_reports(session, vid),
            "warnings": list(version.warnings or []),
        }


def _asset_key(session: Session, asset_id: uuid.UUID | None) -> str | None:
    return session.scalar(select(Asset.key).where(Asset.id == asset_id)) if asset_id is not None else None


def _waveform_keys(session: Session, vid: uuid.UUID) -> dict[str, str | None] | None:
    row = session.scalar(select(Waveform).where(Waveform.track_version_id == vid))
    if row is None:
        return None
    return {"json_key": _asset_key(session, row.json_asset_id), "png_key": _asset_key(session, row.png_asset_id)}


def _artwork_keys(session: Session, track_id: uuid.UUID) -> dict[str, str | None] | None:
    track = session.get(Track, track_id)
    if track is None or track.artwork_asset_id is None:
        return None
    return {
        "full_key": _asset_key(session, track.artwork_asset_id),
        "thumbnail_key": _asset_key(session, track.artwork_thumb_asset_id),
    }


def _duplicate_reports(session: Session, vid: uuid.UUID) -> list[str]:
    return list(
        session.scalars(
            select(Report.description)
            .where(Report.target_type == "track_version", Report.target_id == vid, Report.reason == "duplicate")
            .order_by(Report.created_at)
        )
    )


def load_job(version_id: str) -> VersionJob:
    """The version and its original, without changing its status (for reprocessing flows)."""
    vid = parse_uuid(version_id)
    with session_scope() as session:
        row = session.execute(
            select(TrackVersion, Asset)
            .join(Asset, Asset.id == TrackVersion.original_asset_id)
            .where(TrackVersion.id == vid)
        ).one_or_none()
        if row is None:
            raise InvalidInput(f"track version {version_id} does not exist")
        version, asset = row
        return VersionJob(str(version.id), str(version.track_id), asset.key, Path(asset.key).name, (), ())

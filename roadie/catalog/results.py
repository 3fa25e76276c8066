"""The catalogue's side of the analysis: what the media steps compute (tasks.media.*, pure and session-free) is
stored here. Each function takes a session and the caller's transaction decides when it lands; a rerun replaces
rows and objects, never adds to them. The media results are read through the protocols below (the core sits below
tasks.media); matching fingerprints (numpy) is tasks.media.duplicates', which passes the matches back here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from roadie.catalog import hold, parse_uuid, upsert_asset
from roadie.db.models import AudioFingerprint, FingerprintIndex, Report, Track, TrackVersion
from roadie.db.models import Waveform as WaveformRow
from roadie.errors import InvalidInput
from roadie.storage import Storage, join_key, staged

# What the catalogue reads of each analysis result. The core declares the shapes it needs (tasks.media's frozen
# dataclasses have them), so it never imports the layer above it, not even for annotations.


class Analysis(Protocol):
    @property
    def waveform_json(self) -> str | None: ...
    @property
    def png(self) -> bytes | None: ...


class LoudnessResult(Protocol):
    @property
    def integrated_lufs(self) -> float | None: ...
    @property
    def loudness_range_lu(self) -> float | None: ...
    @property
    def true_peak_dbtp(self) -> float | None: ...
    @property
    def warnings(self) -> tuple[str, ...]: ...


class Fingerprint(Protocol):
    @property
    def items(self) -> tuple[int, ...]: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def sha256(self) -> str: ...


class DuplicateMatch(Protocol):
    @property
    def version_id(self) -> str: ...
    @property
    def track_id(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def ber(self) -> float: ...
    @property
    def offset_s(self) -> float: ...


# A cover as the catalogue stores it; tasks.media.artwork extracts or draws it.
@dataclass(frozen=True)
class Artwork:
    full: bytes  # the cover as embedded (JPEG or PNG), or re-encoded as PNG
    full_extension: str  # "jpg" or "png"
    width: int
    height: int
    thumbnail: bytes  # 200x200 JPEG, centre-cropped
    embedded: bool  # False: the bundled default
    warnings: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return f"cover.{self.full_extension}"

    @property
    def content_type(self) -> str:
        return "image/png" if self.full_extension == "png" else "image/jpeg"

    thumbnail_name = "cover-200.jpg"


# ---------------------------------------------------------------- waveform


@dataclass(frozen=True)
class WaveformKeys:
    json_key: str
    png_key: str | None
    json_asset_id: str
    png_asset_id: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"json_key": self.json_key, "png_key": self.png_key}


def waveform_prefix(version_id: str) -> str:
    return join_key(str(version_id), "waveform")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version(session: Session, version_id: str | uuid.UUID, *, for_update: bool = False) -> TrackVersion:
    vid = version_id if isinstance(version_id, uuid.UUID) else parse_uuid(str(version_id))
    hold(session, vid)  # a run that lost the version to a newer one writes nothing (roadie.catalog: the guard)
    version = session.get(TrackVersion, vid, with_for_update=for_update)
    if version is None:
        raise InvalidInput(f"track version {version_id} does not exist")
    return version


def save_waveform(session: Session, storage: Storage, version_id: str, analysis: Analysis) -> WaveformKeys:
    """Publish waveform.json (+ waveform.png) under `{version_id}/waveform/` (staged: never half-visible), record
    them as assets and write the version's `waveforms` row. A rerun replaces objects and updates the same rows."""
    text = analysis.waveform_json
    if text is None:
        raise InvalidInput("the analysis has no waveform to save")
    vid = _version(session, version_id).id
    body = text.encode("ascii")
    with staged(storage, waveform_prefix(str(vid))) as stage:
        json_key = stage.put_bytes("waveform.json", body, "application/json")
        png_key = stage.put_bytes("waveform.png", analysis.png, "image/png") if analysis.png else None
        stage.promote()
    json_asset = upsert_asset(session, storage, json_key, len(body), _sha256(body))
    png_asset = None
    if png_key is not None and analysis.png is not None:
        png_asset = upsert_asset(session, storage, png_key, len(analysis.png), _sha256(analysis.png))
    row = session.scalar(select(WaveformRow).where(WaveformRow.track_version_id == vid).with_for_update())
    if row is None:
        row = WaveformRow(track_version_id=vid, json_asset_id=json_asset.id)
        session.add(row)
    row.json_asset_id = json_asset.id
    row.png_asset_id = png_asset.id if png_asset is not None else None
    session.flush()
    return WaveformKeys(json_key, png_key, str(json_asset.id), str(png_asset.id) if png_asset else None)


# ---------------------------------------------------------------- loudness


def save_loudness(session: Session, version_id: str | uuid.UUID, result: LoudnessResult) -> None:
    """Write ffmpeg's values to the version and add the cross-check's warnings (each once, so reruns don't pile up)."""
    version = _version(session, version_id, for_update=True)
    version.loudness_lufs = result.integrated_lufs
    version.loudness_range = result.loudness_range_lu
    version.true_peak = result.true_peak_dbtp
    existing = list(version.warnings or [])
    version.warnings = existing + [w for w in result.warnings if w not in existing]
    session.flush()


# ---------------------------------------------------------------- artwork


@dataclass(frozen=True)
class ArtworkKeys:
    full_key: str
    thumbnail_key: str
    embedded: bool
    full_asset_id: str
    thumbnail_asset_id: str

    def as_dict(self) -> dict[str, object]:
        return {"full_key": self.full_key, "thumbnail_key": self.thumbnail_key, "embedded": self.embedded}


def artwork_prefix(track_id: str) -> str:
    """Artwork belongs to the track (tracks.artwork_asset_id), so it lives under the track, not the version:
    a failed later version, whose outputs are discarded, cannot leave the track pointing at deleted objects."""
    return join_key("tracks", str(track_id), "artwork")


def save_artwork(session: Session, storage: Storage, version_id: str, artwork: Artwork) -> ArtworkKeys:
    """Publish the cover and its thumbnail (staged, so never half-visible), record both as assets and point the
    version's track at them. A rerun replaces the objects and updates the same asset rows."""
    version = _version(session, version_id)
    track = session.get(Track, version.track_id, with_for_update=True)
    assert track is not None  # a foreign key
    with staged(storage, artwork_prefix(str(version.track_id))) as stage:
        full_key = stage.put_bytes(artwork.full_name, artwork.full, artwork.content_type)
        thumb_key = stage.put_bytes(artwork.thumbnail_name, artwork.thumbnail, "image/jpeg")
        stage.promote()
    full_asset = upsert_asset(session, storage, full_key, len(artwork.full), _sha256(artwork.full))
    thumb_asset = upsert_asset(session, storage, thumb_key, len(artwork.thumbnail), _sha256(artwork.thumbnail))
    track.artwork_asset_id = full_asset.id
    track.artwork_thumb_asset_id = thumb_asset.id
    session.flush()
    return ArtworkKeys(full_key, thumb_key, artwork.embedded, str(full_asset.id), str(thumb_asset.id))


# ---------------------------------------------------------------- fingerprints and duplicates


def store_fingerprint(session: Session, version_id: str | uuid.UUID, fp: Fingerprint, keys: Iterable[int]) -> None:
    """Write the fingerprint (raw items too) and its index rows (`keys`: tasks.media.fingerprint_match.index_keys).
    A rerun replaces both."""
    vid = _version(session, version_id).id
    row = session.scalar(select(AudioFingerprint).where(AudioFingerprint.track_version_id == vid))
    if row is None:
        row = AudioFingerprint(track_version_id=vid)
        session.add(row)
    row.fingerprint_hash = fp.sha256
    row.chromaprint_data = list(fp.items)
    row.item_count = len(fp.items)
    row.duration_s = float(fp.duration_s)
    session.execute(delete(FingerprintIndex).where(FingerprintIndex.track_version_id == vid))
    key_list = list(keys)
    if key_list:
        session.execute(insert(FingerprintIndex), [{"key": k, "track_version_id": vid} for k in key_list])
    session.flush()


def find_candidates(
    session: Session, version_id: str | uuid.UUID, keys: Iterable[int], *, min_hits: int, limit: int
) -> list[tuple[str, str, int]]:
    """Versions of other tracks sharing the most index keys: (version_id, track_id, hits), most hits first.
    One grouped query over the posting lists; nothing is scanned per track."""
    version = _version(session, version_id)
    key_list = sorted({int(k) for k in keys})
    if not key_list:
        return []
    hits = func.count().label("hits")
    query = (
        select(FingerprintIndex.track_version_id, TrackVersion.track_id, hits)
        .join(TrackVersion, TrackVersion.id == FingerprintIndex.track_version_id)
        .where(
            FingerprintIndex.key.in_(bindparam("keys", expanding=True)),
            FingerprintIndex.track_version_id != version.id,
            TrackVersion.track_id != version.track_id,
        )
        .group_by(FingerprintIndex.track_version_id, TrackVersion.track_id)
        .having(func.count() >= min_hits)
        .order_by(hits.desc(), FingerprintIndex.track_version_id)
        .limit(limit)
    )
    rows = session.execute(query, {"keys": key_list}).all()
    return [(str(v), str(t), int(h)) for v, t, h in rows]


def stored_fingerprints(session: Session, version_ids: Iterable[str]) -> dict[str, list[int]]:
    """The raw Chromaprint items stored for each of these versions (those that have one)."""
    rows = session.execute(
        select(AudioFingerprint.track_version_id, AudioFingerprint.chromaprint_data).where(
            AudioFingerprint.track_version_id.in_([uuid.UUID(v) for v in version_ids])
        )
    ).tuples()
    return {str(vid): list(items) for vid, items in rows if items}


def describe_duplicate(match: DuplicateMatch) -> str:
    return (
        f"track version {match.version_id} (track {match.track_id}): score {match.score:.2f}, "
        f"bit error rate {match.ber:.3f}, offset {match.offset_s:+.1f} s"
    )


def describe_duplicates(matches: Sequence[DuplicateMatch]) -> str:
    """What a moderator reads: every version the upload matches, best first, one per line."""
    lines = [f"same audio as {len(matches)} other version(s):"]
    lines += [f"- {describe_duplicate(m)}" for m in matches]
    return "\n".join(lines)


def report_duplicates(session: Session, version_id: str | uuid.UUID, matches: Sequence[DuplicateMatch]) -> str | None:
    """One `reports` row per flagged upload, listing every version it matches, for moderators. Idempotent: a later
    run updates that report (keeping its status) instead of adding one, and removes it while still pending when
    the matches are gone. Returns the report's id, or None when there is none."""
    vid = _version(session, version_id, for_update=True).id  # one run at a time decides about this report
    existing = list(
        session.scalars(
            select(Report)
            .where(Report.target_type == "track_version", Report.target_id == vid, Report.reason == "duplicate")
            .order_by(Report.created_at)
        )
    )
    report, extra = (existing[0], existing[1:]) if existing else (None, [])
    for older in extra:  # reports filed per matched pair by earlier versions of roadie: fold them into one
        if older.status == "pending":
            session.delete(older)
    if not matches:
        if report is not None and report.status == "pending":
            session.delete(report)
        session.flush()
        return None
    if report is None:
        report = Report(target_type="track_version", target_id=vid, reason="duplicate", status="pending")
        session.add(report)
    report.description = describe_duplicates(matches)
    session.flush()
    return str(report.id)

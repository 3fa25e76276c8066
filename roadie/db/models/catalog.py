"""The catalogue an upload moves through: users, assets, tracks, versions, renditions, analysis results and
duplicate reports. Table and column names are the original platform's."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from roadie.db.models.base import Base, new_id, utcnow

VERSION_STATUSES = ("pending", "processing", "ready", "failed")
TRANSCODE_STATUSES = ("pending", "processing", "ready", "failed")


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(255))
    # Lossless (ALAC) renditions are a whitelisted feature.
    lossless_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Asset(Base):
    __tablename__ = "assets"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    content_type: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("bucket", "key"),)


class Track(Base):
    __tablename__ = "tracks"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    owner_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(500))
    artwork_asset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("assets.id"))
    artwork_thumb_asset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("assets.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrackVersion(Base):
    __tablename__ = "track_versions"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    track_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tracks.id"), index=True)
    original_asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    # Non-fatal problems (a failed waveform, a loudness disagreement), shown in the UI.
    warnings: Mapped[list[Any]] = mapped_column(JSON, default=list)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    channels: Mapped[int | None] = mapped_column(Integer)
    loudness_lufs: Mapped[float | None] = mapped_column(Float)
    loudness_range: Mapped[float | None] = mapped_column(Float)
    true_peak: Mapped[float | None] = mapped_column(Float)
    # The late-result guard: every ingest run that starts processing the version takes the next attempt and
    # writes its flow run id here; each later write of that run is conditional on the id still being its own, so a
    # superseded run (a slow original overtaken by its retry) can no longer change the version, its transcodes,
    # its analysis or the objects under its prefix (roadie.catalog).
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempt_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    __table_args__ = (CheckConstraint("status IN ('pending','processing','ready','failed')", name="status"),)


class Transcode(Base):
    __tablename__ = "transcodes"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    track_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("track_versions.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(16))
    playlist_asset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("assets.id"))
    segment_prefix_key: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    bandwidth: Mapped[int | None] = mapped_column(Integer)
    segment_count: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    __table_args__ = (
        UniqueConstraint("track_version_id", "format"),
        CheckConstraint("format IN ('hls_opus','hls_aac','hls_alac')", name="format"),
        CheckConstraint("status IN ('pending','processing','ready','failed')", name="status"),
    )


class Waveform(Base):
    __tablename__ = "waveforms"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    track_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("track_versions.id", ondelete="CASCADE"), unique=True
    )
    json_asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id"))
    png_asset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("assets.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AudioFingerprint(Base):
    __tablename__ = "audio_fingerprints"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    track_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("track_versions.id", ondelete="CASCADE"), unique=True
    )
    # sha256 of the raw items: finds exact copies only; near-duplicates go through fingerprint_index.
    fingerprint_hash: Mapped[str] = mapped_column(String(64), index=True)
    # The raw Chromaprint items as a JSON list of uint32.
    chromaprint_data: Mapped[list[Any]] = mapped_column(JSON)
    item_count: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FingerprintIndex(Base):
    """Posting list: which versions contain a (masked) Chromaprint item. Prefilters duplicate candidates."""

    __tablename__ = "fingerprint_index"
    key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    track_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("track_versions.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Report(Base):
    __tablename__ = "reports"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    reason: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

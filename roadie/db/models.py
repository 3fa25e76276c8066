"""The schema roadie shares with the platform's API. Table and column names are the original platform's."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for event tables.
BigId = BigInteger().with_variant(Integer, "sqlite")

VERSION_STATUSES = ("pending", "processing", "ready", "failed")
TRANSCODE_STATUSES = ("pending", "processing", "ready", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


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
    # its analysis or the objects under its prefix (tasks.catalog).
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


class AnalyticsPlay(Base):
    __tablename__ = "analytics_play"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    track_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tracks.id"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    ip_hash: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    watch_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        Index("ix_analytics_play_started_at", "started_at"),
        Index("ix_analytics_play_user_started", "user_id", "started_at"),
    )


class AnalyticsDaily(Base):
    """Derived from analytics_play and the engagement tables, which carry the foreign keys; a key here would
    cost the rollup a trigger call per written row. Keyed by day first: a day's rows are written together, at
    the index's right edge, and a rerun finds them by the key's prefix. On PostgreSQL the table keeps 30% of
    each page free (fillfactor 70), so the per-kind updates of a day's rows stay heap-only (no index writes)."""

    __tablename__ = "analytics_daily"
    track_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    day: Mapped[date] = mapped_column(Date)
    plays: Mapped[int] = mapped_column(BigInteger, default=0)
    uniques: Mapped[int] = mapped_column(BigInteger, default=0)
    completions: Mapped[int] = mapped_column(BigInteger, default=0)
    likes: Mapped[int] = mapped_column(BigInteger, default=0)
    reposts: Mapped[int] = mapped_column(BigInteger, default=0)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (
        PrimaryKeyConstraint("day", "track_id"),
        Index("ix_analytics_daily_track_id", "track_id", "day"),  # a track's history
    )


class _Engagement:
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    track_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tracks.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Like(_Engagement, Base):
    __tablename__ = "likes"


class Repost(_Engagement, Base):
    __tablename__ = "reposts"


class Download(_Engagement, Base):
    __tablename__ = "downloads"


class Charity(Base):
    __tablename__ = "charities"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Contribution(Base):
    __tablename__ = "contributions"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    artist_percent: Mapped[int] = mapped_column(Integer)
    charity_percent: Mapped[int] = mapped_column(Integer, default=0)
    charity_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("charities.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (Index("ix_contributions_created_at", "created_at"),)


class ArtistPayout(Base):
    __tablename__ = "artist_payouts"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    artist_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    contribution_count: Mapped[int] = mapped_column(Integer)
    listener_count: Mapped[int] = mapped_column(Integer)
    __table_args__ = (UniqueConstraint("artist_id", "period_start"),)


from roadie.db import (
    models_ops,  # noqa: F401  (failed_jobs, the dead-letter table)
    models_payouts,  # noqa: F401  (distribution ledger tables)
)

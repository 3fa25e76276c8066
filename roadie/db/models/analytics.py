"""Plays and engagement (written by the platform's API) and the daily rollup derived from them."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    PrimaryKeyConstraint,
    String,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from roadie.db.models.base import Base, BigId, utcnow


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

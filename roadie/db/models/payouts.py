"""Payouts: what listeners contribute, what artists are paid, and the distribution's own ledger: one run row
per month, and the lines that explain every cent of it.

Every table is keyed by the period (the month's first day), so a rerun replaces exactly its own period. Lines
carry no foreign keys to users: they are written in bulk from rows that passed those checks already, and the
per-row FK triggers made the audit trail's insert 3x slower (8 s -> 27 s for 2.2M lines in bench/distribution).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from roadie.db.models.base import Base, new_id, utcnow


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


PAYOUT_RUN_STATUSES = ("computed", "paid")


class PayoutRun(Base):
    """One row per month: its totals as last computed, and whether the money has gone out (then it is frozen)."""

    __tablename__ = "payout_runs"
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    # The month's last day, inclusive, as in artist_payouts.period_end.
    period_end: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default="computed")
    # The month's totals (what `roadie distribute` prints), each with what it sums.
    contributions: Mapped[int] = mapped_column(Integer, default=0, doc="The month's succeeded contributions.")
    amount_cents: Mapped[int] = mapped_column(BigInteger, default=0, doc="Σ their amounts.")
    pool_cents: Mapped[int] = mapped_column(BigInteger, default=0, doc="Σ the artists' share of each amount.")
    paid_cents: Mapped[int] = mapped_column(BigInteger, default=0, doc="Σ artist_payouts.total_cents.")
    unallocated_cents: Mapped[int] = mapped_column(BigInteger, default=0, doc="Pools of no qualified listening.")
    charity_cents: Mapped[int] = mapped_column(BigInteger, default=0, doc="Σ payout_charity_totals.cents.")
    platform_cents: Mapped[int] = mapped_column(BigInteger, default=0, doc="What is left to the platform.")
    artists: Mapped[int] = mapped_column(Integer, default=0, doc="Artists paid (artist_payouts rows).")
    listeners: Mapped[int] = mapped_column(Integer, default=0, doc="Users whose pool reached artists.")
    unallocated_users: Mapped[int] = mapped_column(Integer, default=0, doc="Users whose pool went unallocated.")
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (CheckConstraint("status IN ('computed','paid')", name="status"),)


class PayoutAllocationLine(Base):
    """Audit trail: how much of one user's pool reached one artist. cents is the largest-remainder share of the
    pool (Σ the user's artist shares) by weight_ms (capped, qualified listening) over the user's Σ weight_ms."""

    __tablename__ = "payout_allocation_lines"
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    artist_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    weight_ms: Mapped[int] = mapped_column(BigInteger)
    cents: Mapped[int] = mapped_column(BigInteger)


class PayoutUnallocatedLine(Base):
    """A pool nobody earned (the user paid but had no qualified listening): kept, never dropped."""

    __tablename__ = "payout_unallocated_lines"
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    cents: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(64))


class PayoutCharityTotal(Base):
    __tablename__ = "payout_charity_totals"
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    charity_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    cents: Mapped[int] = mapped_column(BigInteger)
    contribution_count: Mapped[int] = mapped_column(Integer)

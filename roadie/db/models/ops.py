"""Operations tables: jobs that failed for good (the dead-letter queue of the original design)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from roadie.db.models.base import Base, new_id, utcnow


class FailedJob(Base):
    """One row per flow run that ended Failed or Crashed; a later failure of the same run replaces it."""

    __tablename__ = "failed_jobs"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    flow_name: Mapped[str] = mapped_column(String(255))
    deployment_name: Mapped[str | None] = mapped_column(String(255), index=True)
    flow_run_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    flow_run_name: Mapped[str | None] = mapped_column(String(255))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Failed, Crashed, TimedOut …: the final state's name.
    state: Mapped[str] = mapped_column(String(32))
    error: Mapped[str] = mapped_column(Text, default="")
    # The most tries any step got (a retried task counts each try), at least the flow's own run count.
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retried_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retry_flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

"""Index tables of study lifecycle, routing attributes, jobs and webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, utcnow


class StudyState(Base):
    """Where a study is in its lifecycle: ``receiving`` until a quiet period passes, then
    ``stable``; a late instance re-opens it as the next ``version``."""

    __tablename__ = "study_state"
    __table_args__ = (Index("ix_study_state_due", "state", "stable_deadline"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16))  # receiving | stable
    version: Mapped[int] = mapped_column(Integer, default=1)
    received_in_version: Mapped[int] = mapped_column(Integer, default=1)
    stable_deadline: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SeriesRouting(Base):
    """Attributes of a series that routing rules use and the series table does not keep
    (taken from the series' first instance)."""

    __tablename__ = "series_routing"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    image_type: Mapped[str] = mapped_column(String(128), default="")
    slice_thickness: Mapped[float | None] = mapped_column(Float, nullable=True)
    orientation: Mapped[str] = mapped_column(String(16), default="")  # AXIAL | CORONAL | ...


class Job(Base):
    """One analysis of one study version: claimed by workers under a lease."""

    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("study_instance_uid", "study_version", "analysis", name="uq_job_version"),
        Index("ix_job_claim", "status", "run_after"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis: Mapped[str] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    series_instance_uids: Mapped[list[str]] = mapped_column(JSON)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    rule: Mapped[str] = mapped_column(String(64), default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # queued | running | succeeded | failed (will retry) | dead | cancelled
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    run_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Webhook(Base):
    """A receiver of the change feed: delivered in order from ``cursor_seq`` on."""

    __tablename__ = "webhook"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(1024), unique=True)
    secret: Mapped[str] = mapped_column(String(256), default="")
    kinds: Mapped[str] = mapped_column(String(512), default="")  # comma-separated; "" = all
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    cursor_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    last_error: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """The delivery log: one row per attempt to post a batch of events."""

    __tablename__ = "webhook_delivery"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_pk: Mapped[int] = mapped_column(
        ForeignKey("webhook.pk", ondelete="CASCADE"), index=True
    )
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    events: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str] = mapped_column(String(512), default="")
    duration_ms: Mapped[float] = mapped_column(Float)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

"""Index tables of the EMR link: feed positions, AI reports and review decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, utcnow


class FeedPosition(Base):
    """How far a change-feed consumer got: the last ``seq`` it has fully handled."""

    __tablename__ = "feed_position"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AiReport(Base):
    """The FHIR resources made from one AI result (``ai_result.pk``), so that a re-run
    updates them instead of creating new ones."""

    __tablename__ = "ai_report"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_pk: Mapped[int] = mapped_column(Integer, unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    diagnostic_report_id: Mapped[str] = mapped_column(String(64))
    provenance_id: Mapped[str] = mapped_column(String(64), default="")
    observation_ids: Mapped[dict[str, Any]] = mapped_column(JSON)  # measurement key -> id
    status: Mapped[str] = mapped_column(String(16))  # preliminary, final, cancelled
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReviewDecision(Base):
    """One radiologist's sign-off of an AI result: who, when, what they decided."""

    __tablename__ = "review_decision"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_pk: Mapped[int] = mapped_column(Integer, unique=True)
    decision: Mapped[str] = mapped_column(String(16))  # final, cancelled
    findings: Mapped[list[Any]] = mapped_column(JSON)  # [{code, action, value, previous}]
    conclusion: Mapped[str] = mapped_column(Text, default="")
    signer: Mapped[str] = mapped_column(String(128))
    practitioner: Mapped[str] = mapped_column(String(128))  # "Practitioner/<id>"
    organisation: Mapped[str] = mapped_column(String(128), default="")
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StudyReconciliation(Base):
    """A study the EMR link did not attach to the FHIR Patient its PatientID found, because
    their demographics contradict: to be reconciled by a person (``pacs.emr.matching``)."""

    __tablename__ = "study_reconciliation"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(255))  # attributes that contradict, no values
    candidate: Mapped[str] = mapped_column(String(128))  # "Patient/<id>" it was not linked to
    flagged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

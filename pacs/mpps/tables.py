"""Index table of Modality Performed Procedure Steps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, utcnow


class PerformedProcedureStep(Base):
    """One MPPS SOP Instance: its state, the referral it performs and its attributes."""

    __tablename__ = "mpps"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # IN PROGRESS, COMPLETED, DISCONTINUED
    service_request_id: Mapped[str] = mapped_column(String(64), index=True, default="")
    procedure_id: Mapped[str] = mapped_column(String(64), default="")
    holds_step: Mapped[bool] = mapped_column(Boolean, default=True)  # off the worklist
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)  # DICOM JSON of the step
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

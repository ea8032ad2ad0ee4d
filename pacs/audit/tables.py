"""The audit feature's tables: ``audit_event`` (one row per access, hash-chained) and
``audit_chain`` (the chain head: one row, the last sequence number and hash)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, utcnow


class AuditEvent(Base):
    """One access (IHE BALP AuditEvent shape): who (subject, roles, organisation,
    practitioner), from where (client address, protocol), what (action, resource, patient,
    study), with what outcome; ``seq``/``hash`` chain it to the row before (``chain``)."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_patient", "patient_identifier", "recorded_at"),
        Index("ix_audit_event_seq", "seq", unique=True),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    user_name: Mapped[str] = mapped_column(String(128))  # the subject's name / calling AE
    subject_kind: Mapped[str] = mapped_column(String(16), default="")  # user, system, ae, local
    roles: Mapped[str] = mapped_column(String(128), default="")  # comma separated
    organisation: Mapped[str] = mapped_column(String(128), default="")  # on behalf of
    practitioner: Mapped[str] = mapped_column(String(128), default="")  # FHIR Practitioner id
    client_address: Mapped[str] = mapped_column(String(64), default="")
    protocol: Mapped[str] = mapped_column(String(16), default="http")  # http dimse fhir dicomweb
    action: Mapped[str] = mapped_column(String(16))  # create read update delete search ...
    resource: Mapped[str] = mapped_column(String(255))  # a path or a DIMSE service
    query: Mapped[str] = mapped_column(String(1024), default="")
    patient_identifier: Mapped[str] = mapped_column(String(64), default="")  # never a name
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[int] = mapped_column(Integer, default=200)  # HTTP or DIMSE status
    outcome_code: Mapped[str] = mapped_column(String(2), default="0")  # FHIR 0 4 8 12
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False)
    break_glass_reason: Mapped[str] = mapped_column(String(255), default="")
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: before 0014
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditChain(Base):
    """The head of the hash chain: the one row ``pk = 1`` holds the last ``seq`` and
    ``hash``; every append updates it first, which serialises appends (row lock)."""

    __tablename__ = "audit_chain"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64), default="")

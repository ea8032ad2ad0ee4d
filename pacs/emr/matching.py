"""Linking a study to a FHIR Patient on identifier AND demographics, and the studies flagged
for reconciliation when they contradict.

A FHIR Patient found by the study's PatientID (or as the subject of its ServiceRequest) is the
study's patient only when its name, birth date and gender do not contradict the study's DICOM
patient (``pacs.identity``: a value missing on either side never contradicts; any one of the
Patient's names may match). Otherwise the study is not attached to that person: it gets a
Patient of its own made from its DICOM data (tagged ``reconcile``), a ``study_reconciliation``
row (``GET /api/studies/{uid}``) and one ``study.reconcile`` change event, until the
demographics agree again (the flag is then cleared).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pacs import changes
from pacs.emr.tables import StudyReconciliation
from pacs.identity import Demographics, contradictions
from pacs.index.engine import WRITE, writer_turn
from pacs.index.models import as_utc, utcnow

_SEX = {"male": "M", "female": "F", "other": "O"}
RECONCILIATION: Table = StudyReconciliation.__table__  # type: ignore[assignment]


def _person_name(name: dict[str, Any]) -> str:
    given = [str(g) for g in name.get("given") or []]
    first = given[0] if given else ""
    return f"{name.get('family') or ''}^{first}^{' '.join(given[1:])}"


def patient_contradictions(dicom: Demographics, patient: dict[str, Any]) -> list[str]:
    """The DICOM attributes on which FHIR ``patient`` contradicts the study's patient."""
    found = []
    names = [
        _person_name(n) for n in patient.get("name") or [] if n.get("family") or n.get("given")
    ]
    if names and all(contradictions(dicom, Demographics(patient_name=name)) for name in names):
        found.append("PatientName")
    birth = str(patient.get("birthDate") or "").replace("-", "")
    if birth and dicom.patient_birth_date and dicom.patient_birth_date[: len(birth)] != birth:
        found.append("PatientBirthDate")
    sex = _SEX.get(str(patient.get("gender") or ""), "")
    if contradictions(dicom, Demographics(patient_sex=sex)):
        found.append("PatientSex")
    return found


def flag(engine: Engine, study_instance_uid: str, reason: str, candidate: str) -> None:
    """Record that the study awaits reconciliation; one ``study.reconcile`` event each time
    the flag is raised or its reason or candidate changes."""
    values = {
        "study_instance_uid": study_instance_uid,
        "reason": reason[:255],
        "candidate": candidate[:128],
        "flagged_at": utcnow(),
    }
    table = RECONCILIATION
    with writer_turn(engine), engine.execution_options(**WRITE).begin() as conn:
        known = conn.execute(
            select(table.c.reason, table.c.candidate).where(
                table.c.study_instance_uid == study_instance_uid
            )
        ).first()
        if known is not None and tuple(known) == (values["reason"], values["candidate"]):
            return
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(table)
            .values(**values)
            .on_conflict_do_update(
                index_elements=["study_instance_uid"],
                set_={k: v for k, v in values.items() if k != "study_instance_uid"},
            )
        )
        changes.record(
            conn,
            "study.reconcile",
            study_instance_uid=study_instance_uid,
            payload={"reason": values["reason"], "candidate": values["candidate"]},
        )


def clear(engine: Engine, study_instance_uid: str) -> None:
    """The study is linked: it no longer awaits reconciliation."""
    table = RECONCILIATION
    with engine.connect() as conn:
        flagged = conn.scalar(
            select(table.c.study_instance_uid).where(
                table.c.study_instance_uid == study_instance_uid
            )
        )
    if flagged is None:
        return
    with writer_turn(engine), engine.execution_options(**WRITE).begin() as conn:
        conn.execute(delete(table).where(table.c.study_instance_uid == study_instance_uid))


def reconciliation_of(session: Session, study_instance_uid: str) -> dict[str, Any] | None:
    """The study's reconciliation flag as ``/api/studies/{uid}`` shows it, or None."""
    row = session.get(StudyReconciliation, study_instance_uid)
    if row is None:
        return None
    return {
        "reason": row.reason,
        "candidate": row.candidate,
        "flagged_at": as_utc(row.flagged_at).isoformat(),
    }

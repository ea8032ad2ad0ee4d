"""What an audit record names, looked up in the index: the patient of a study."""

from __future__ import annotations

from sqlalchemy import Engine, select

from pacs.index.models import Patient, Study


def patient_of_study(engine: Engine, study_instance_uid: str) -> str:
    """The PatientID of the study ('' when the study is unknown)."""
    if not study_instance_uid:
        return ""
    with engine.connect() as conn:
        found = conn.scalar(
            select(Patient.patient_id)
            .join(Study, Study.patient_pk == Patient.pk)
            .where(Study.study_instance_uid == study_instance_uid[:64])
            .limit(1)
        )
    return found or ""

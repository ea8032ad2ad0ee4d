"""Indexes that query matching needs beyond the core schema.

PN matching lowers the name (``lower(patient_name) LIKE 'smi%'``): on PostgreSQL an expression
index with ``text_pattern_ops`` turns a prefix wildcard into an index range scan (a sequential
scan of every patient otherwise). It is PostgreSQL-only: SQLite's LIKE never uses an
expression index, and its built-in ``lower()`` is ASCII-only, so an index on it would not agree
with the Unicode ``lower()`` that ``pacs.query`` installs on its connections.
"""

from __future__ import annotations

from sqlalchemy import Index, func

from pacs.index.models import Patient

PATIENT_NAME_LOWER = Index(
    "ix_patient_name_lower",
    func.lower(Patient.__table__.c.patient_name).label("patient_name_lower"),
    postgresql_ops={"patient_name_lower": "text_pattern_ops"},
).ddl_if(dialect="postgresql")
"""Prefix matching of case-insensitive PatientName keys (PostgreSQL)."""

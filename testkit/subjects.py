"""Callers of every role for tests of the access policy.

Until tokens are accepted by every route, a test acts as a subject by overriding the one auth
seam (``viewer_api.deps.get_current_user``) with :func:`as_subject`; the same tests can later
send the subject's token instead.
"""

from __future__ import annotations

from fastapi import FastAPI

from pacs.security.subject import Role, Subject, SubjectKind
from viewer_api.deps import get_current_user

ORG_A, ORG_B = "OrgA", "OrgB"
"""Two organisations: each stores its own studies."""


def person(role: Role, organisation: str = ORG_A, practitioner: str = "") -> Subject:
    """A user with one role acting for ``organisation`` (a Practitioner id if they sign)."""
    return Subject(
        name=f"{role.value}-{organisation or 'none'}",
        kind=SubjectKind.USER,
        roles=frozenset({role}),
        organisation=organisation,
        practitioner=practitioner,
    )


def patient(identifier: str) -> Subject:
    """A patient user: their own record (DICOM PatientID / FHIR Patient identifier)."""
    return Subject(
        name=f"patient-{identifier}",
        kind=SubjectKind.USER,
        roles=frozenset({Role.PATIENT}),
        patient=identifier,
    )


def system(*scopes: str) -> Subject:
    """An integration client with SMART ``scopes`` (default ``system/*.cruds``)."""
    return Subject(
        name="integration",
        kind=SubjectKind.SYSTEM,
        roles=frozenset({Role.SYSTEM}),
        scopes=frozenset(scopes or ("system/*.cruds",)),
    )


ANONYMOUS = Subject(name="anonymous", kind=SubjectKind.USER, roles=frozenset())
"""A caller with no role at all (what an unauthenticated request may at most be)."""

ROLE_SUBJECTS: dict[str, Subject] = {
    "admin": person(Role.ADMIN, ""),
    "radiologist": person(Role.RADIOLOGIST, practitioner="rad-a"),
    "clinician": person(Role.CLINICIAN),
    "patient": patient("P-A"),
    "modality": person(Role.MODALITY),
    "registrar": person(Role.REGISTRAR),
    "analyst": person(Role.ANALYST),
    "system": system(),
    "anonymous": ANONYMOUS,
}
"""One subject per role (and one with none), by name."""


def as_subject(app: FastAPI, subject: Subject) -> None:
    """Make every request to ``app`` come from ``subject``."""
    app.dependency_overrides[get_current_user] = lambda: subject

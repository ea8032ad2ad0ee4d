"""The subject of an access: who is calling, over any protocol (HTTP token, web session,
OIDC, DICOM association). Every request resolves to one :class:`Subject` before any data is
read; :mod:`pacs.security.policy` decides what it may do."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """The roles of the archive (``pacs users add --role``, OIDC role claims)."""

    ADMIN = "admin"  # everything, incl. admin surfaces (AEs, webhooks, rules, quarantine)
    RADIOLOGIST = "radiologist"  # studies of the organisations they read for; review and sign
    CLINICIAN = "clinician"  # patients in care at their organisation; break-glass otherwise
    PATIENT = "patient"  # their own compartment only
    MODALITY = "modality"  # store; worklist of its organisation
    REGISTRAR = "registrar"  # registry / terminology / directories administration
    ANALYST = "analyst"  # aggregates, no identifiers
    SYSTEM = "system"  # integration client, scoped system access


class SubjectKind(StrEnum):
    """How the subject was identified."""

    USER = "user"  # a person: local account or OIDC user
    SYSTEM = "system"  # a client-credentials client
    AE = "ae"  # a calling DICOM application entity
    LOCAL = "local"  # PACS_AUTH=none on 127.0.0.1: the machine's own user, admin


@dataclass(frozen=True, slots=True)
class Subject:
    """An authenticated caller.

    ``organisation`` is the organisation the subject acts for ('' = none); ``practitioner``
    the FHIR Practitioner id of a person who signs; ``patient`` the patient identifier
    (DICOM PatientID / FHIR Patient identifier value) of a patient user; ``scopes`` the
    SMART scopes of a token (empty = the role's defaults); ``reads_for`` the other
    organisations whose studies a radiologist reads (``PACS_RADIOLOGIST_READS_FOR`` or a
    claim); ``break_glass`` the reason a clinician stated to open a patient outside the
    policy (``X-Break-Glass-Reason``), '' when none."""

    name: str
    kind: SubjectKind
    roles: frozenset[Role]
    organisation: str = ""
    practitioner: str = ""
    patient: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)
    client_address: str = ""
    reads_for: frozenset[str] = field(default_factory=frozenset)
    break_glass: str = ""

    def has(self, role: Role) -> bool:
        """Whether the subject holds ``role``."""
        return role in self.roles

    @property
    def is_admin(self) -> bool:
        """Whether the subject holds the admin role."""
        return Role.ADMIN in self.roles


LOCAL_ADMIN = Subject(name="local-admin", kind=SubjectKind.LOCAL, roles=frozenset({Role.ADMIN}))
"""The subject of every request under ``PACS_AUTH=none`` (bound to 127.0.0.1 only)."""

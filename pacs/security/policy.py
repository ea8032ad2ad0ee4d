"""The access policy: what a :class:`Subject` may do, the same for DIMSE, DICOMweb, FHIR and
``/api``.

Two kinds of answers:

- :func:`decide` — may ``subject`` perform ``action`` on a kind of ``Resource`` at all (the
  role grants, SMART scopes for FHIR types, sign-off only by radiologists); routes and DIMSE
  services ask it before touching data.
- :func:`reach` — which patients' data the subject reaches (its organisation's, the
  organisations a radiologist reads for, patients in care at a clinician's organisation,
  a patient's own record, everything); :mod:`pacs.security.imaging` and
  :mod:`pacs.security.fhir_scope` compile it into SQL conditions the queries carry, so
  rows outside it are never fetched. Patient consent (:mod:`pacs.security.consent`) is an
  input of those conditions.

Break-glass: a clinician who states a reason (``Subject.break_glass``) reaches every patient,
consents included, for reads and searches; the decision carries the reason for the audit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from pacs.security.errors import SecurityError
from pacs.security.subject import Role, Subject, SubjectKind


class Action(StrEnum):
    """What a subject does to a resource."""

    SEARCH = "search"
    READ = "read"
    WRITE = "write"  # create and update
    DELETE = "delete"
    SIGN = "sign"  # a radiologist's sign-off of an AI result
    ADMIN = "admin"  # configuration: AEs, webhooks, rules, jobs, quarantine, models


class Resource(StrEnum):
    """The kinds of resource the policy knows (each route and DIMSE service names one)."""

    IMAGING = "imaging"  # DICOM studies: QIDO/WADO/STOW, /api/studies, C-FIND/C-GET/C-MOVE
    WORKLIST = "worklist"  # Modality Worklist (C-FIND MWL), its performed steps (MPPS)
    FHIR = "fhir"  # FHIR resources; per type: fhir_decision
    REVIEW = "review"  # AI results for review and sign-off
    JOBS = "jobs"  # the job queue (listing, cancel, retry)
    CHANGES = "changes"  # the change feed
    ADMINISTRATION = "administration"  # AEs, webhooks, rules, quarantine, models
    AUDIT = "audit"  # the audit trail (/fhir/AuditEvent): auditors, and patients their own


_READ = frozenset({Action.SEARCH, Action.READ})
_ALL = frozenset(Action) - {Action.SIGN}

GRANTS: dict[Role, dict[Resource, frozenset[Action]]] = {
    Role.ADMIN: {resource: _ALL for resource in Resource},
    Role.RADIOLOGIST: {
        Resource.IMAGING: _READ,
        Resource.FHIR: _READ,
        Resource.REVIEW: _READ | {Action.SIGN},
        Resource.JOBS: _READ,
    },
    Role.CLINICIAN: {Resource.IMAGING: _READ, Resource.FHIR: _READ | {Action.WRITE}},
    Role.PATIENT: {
        Resource.IMAGING: _READ,
        Resource.FHIR: _READ | {Action.WRITE},
        Resource.AUDIT: _READ,  # their own record's access log (viewer_api.routers.fhir_audit)
    },
    Role.MODALITY: {
        Resource.IMAGING: _READ | {Action.WRITE},
        Resource.WORKLIST: frozenset({Action.SEARCH, Action.WRITE}),  # MWL; MPPS
    },
    Role.REGISTRAR: {Resource.FHIR: _READ | {Action.WRITE, Action.DELETE}},
    Role.ANALYST: {Resource.FHIR: _READ},
    Role.SYSTEM: {
        Resource.IMAGING: _READ | {Action.WRITE},
        Resource.WORKLIST: frozenset({Action.SEARCH, Action.WRITE}),
        Resource.FHIR: _READ | {Action.WRITE, Action.DELETE, Action.ADMIN},
        Resource.CHANGES: _READ,
    },
}
"""What each role may do to each kind of resource (before scopes and data reach)."""

DIRECTORY_TYPES = frozenset(
    {
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "HealthcareService",
        "Endpoint",
        "Device",
        "ValueSet",
        "CodeSystem",
        "ConceptMap",
        "NamingSystem",
    }
)
"""FHIR registry, terminology and directory types: no patient data; every role reads them,
registrars and administrators write them."""

_PATIENT_WRITES = frozenset({"Consent"})
"""Types a patient writes in their own compartment (their "who may see my record")."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of the policy: allowed or not, why, and the break-glass reason that
    allowed it (for the audit record and the patient's access log)."""

    allowed: bool
    reason: str = ""
    break_glass: str = ""

    def __bool__(self) -> bool:
        return self.allowed


def _deny(subject: Subject, action: Action, what: str) -> Decision:
    roles = ",".join(sorted(subject.roles)) or "no role"
    return Decision(False, f"{roles} may not {action} {what}")


def decide(subject: Subject, action: Action, resource: Resource) -> Decision:
    """Whether ``subject`` may perform ``action`` on ``resource`` (its data reach aside)."""
    if action is Action.SIGN and subject.kind is SubjectKind.LOCAL:
        return Decision(True)  # PACS_AUTH=none on 127.0.0.1: the machine's own user
    granted = any(action in GRANTS.get(role, {}).get(resource, ()) for role in subject.roles)
    if not granted:
        return _deny(subject, action, resource.value)
    scoped = subject.has(Role.SYSTEM) and not subject.is_admin and resource is Resource.IMAGING
    if scoped and not scope_permits(subject, "ImagingStudy", action):
        return Decision(False, f"no SMART scope grants {action} on ImagingStudy")
    return Decision(True, break_glass=break_glass_of(subject, action))


def fhir_decision(subject: Subject, action: Action, resource_type: str) -> Decision:
    """Whether ``subject`` may perform ``action`` on FHIR resources of ``resource_type``:
    the role's grants, then the type (directories vs patient data), then SMART scopes."""
    general = decide(subject, action, Resource.FHIR)
    if not general:
        return general
    if not scope_permits(subject, resource_type, action):
        return Decision(False, f"no SMART scope grants {action} on {resource_type}")
    if subject.is_admin or subject.has(Role.SYSTEM):
        return general
    directory = resource_type in DIRECTORY_TYPES
    if action in _READ:
        if directory or any(subject.has(r) for r in _PATIENT_READERS):
            return general
        return _deny(subject, action, f"{resource_type} (patient data)")
    if directory and subject.has(Role.REGISTRAR):
        return general
    if not directory and subject.has(Role.CLINICIAN):
        return general
    if resource_type in _PATIENT_WRITES and subject.has(Role.PATIENT):
        return general
    return _deny(subject, action, resource_type)


_PATIENT_READERS = (Role.RADIOLOGIST, Role.CLINICIAN, Role.PATIENT)


def break_glass_of(subject: Subject, action: Action) -> str:
    """The break-glass reason that applies to ``action`` ('' when none): only a clinician's,
    only for reads and searches."""
    if subject.break_glass and subject.has(Role.CLINICIAN) and action in _READ:
        return subject.break_glass
    return ""


# ---------------------------------------------------------------- SMART scopes

_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_LETTERS = {
    Action.SEARCH: "s",
    Action.READ: "r",
    Action.WRITE: "cu",
    Action.DELETE: "d",
    Action.ADMIN: "cruds",
}


def smart_scopes(scopes: Iterable[str]) -> list[tuple[str, str, str]]:
    """The SMART resource scopes among ``scopes``: (context, type, permission letters), for
    ``patient/*.rs``, ``user/Observation.cruds``, ``system/*.read`` (v1 names)."""
    found = []
    for scope in scopes:
        context, slash, rest = scope.partition("/")
        rtype, dot, permission = rest.partition(".")
        if not slash or not dot or context not in ("patient", "user", "system") or not rtype:
            continue
        letters = _V1.get(permission, permission.partition("?")[0])
        if letters and set(letters) <= set("cruds"):
            found.append((context, rtype, letters))
    return found


def scope_permits(subject: Subject, resource_type: str, action: Action) -> bool:
    """Whether the subject's SMART scopes permit ``action`` on ``resource_type``. Without
    SMART scopes a person's role decides alone; a system client needs a scope."""
    granted = smart_scopes(subject.scopes)
    if not granted:
        return not subject.has(Role.SYSTEM) or subject.is_admin
    needed = _LETTERS.get(action, "")
    return any(
        rtype in ("*", resource_type) and any(letter in letters for letter in needed)
        for _context, rtype, letters in granted
    )


# ---------------------------------------------------------------- data reach


@dataclass(frozen=True, slots=True)
class Reach:
    """Which patients' data a subject reaches; compiled into SQL by
    :mod:`pacs.security.imaging` (DICOM index) and :mod:`pacs.security.fhir_scope`.

    ``organisation``: data stored by (DICOM ``Series.source_organisation``) that
    organisation; ``reads_for``: data of these organisations too, unless the patient's
    consent refuses sharing outside the treating organisation; ``care``: patients with an
    Encounter, ServiceRequest or Appointment at ``organisation``; ``patient``: only that
    patient's record (identifier value). Consents refusing ``organisation`` always apply."""

    organisation: str = ""
    reads_for: frozenset[str] = frozenset()
    care: bool = False
    patient: str = ""


EVERYTHING = None
"""The reach of an unrestricted subject (``reach`` answers None)."""


class NoReach(SecurityError):
    """The subject reaches no patient data at all (e.g. a clinician without organisation)."""


def reach(subject: Subject) -> Reach | None:
    """The subject's reach over patient data; None = every patient. Raise :class:`NoReach`
    when it reaches none (queries then answer nothing)."""
    if subject.is_admin or subject.kind is SubjectKind.LOCAL:
        return EVERYTHING
    if break_glass_of(subject, Action.READ):
        return EVERYTHING
    if subject.has(Role.SYSTEM):  # scoped by type (decide, fhir_decision), not by patient
        return EVERYTHING
    if subject.has(Role.PATIENT):
        if not subject.patient:
            raise NoReach("a patient subject without a patient identifier")
        return Reach(patient=subject.patient)
    roles = {Role.RADIOLOGIST, Role.CLINICIAN, Role.MODALITY} & subject.roles
    if not roles or not subject.organisation:
        raise NoReach("no organisation to act for")
    reads_for = subject.reads_for if Role.RADIOLOGIST in roles else frozenset()
    return Reach(
        organisation=subject.organisation,
        reads_for=frozenset(reads_for) - {subject.organisation},
        care=Role.CLINICIAN in roles,
    )


def with_settings(
    subject: Subject, reads_for: dict[str, tuple[str, ...]], break_glass: str = ""
) -> Subject:
    """The subject as the policy sees it: the organisations its radiologists read for
    (``PACS_RADIOLOGIST_READS_FOR``, added to any from its token) and a clinician's
    break-glass reason (others' are ignored)."""
    extra = frozenset(reads_for.get(subject.organisation, ())) if subject.organisation else None
    if extra and Role.RADIOLOGIST in subject.roles:
        subject = replace(subject, reads_for=subject.reads_for | extra)
    reason = " ".join(break_glass.split())[:256]
    if reason and Role.CLINICIAN in subject.roles:
        subject = replace(subject, break_glass=reason)
    return subject

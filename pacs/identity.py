"""Patient identity rules: when two descriptions of a patient are of two different people.

Used by ingest (a UID already held by another patient) and by the EMR link (a FHIR Patient
found by identifier whose demographics are someone else's). A value that is missing on one
side never contradicts: only two present values that differ do.

- PatientID with IssuerOfPatientID: compared exactly (an empty issuer is a value of its own).
- PatientName: each component group (alphabetic, ideographic, phonetic) and in it each of the
  five ``^`` components is compared where both are present, case-insensitively, with runs of
  white space collapsed; trailing empty components do not count (``DOE^JOHN^^`` is
  ``doe^john``).
- PatientBirthDate: the 8 digits of DA.
- PatientSex: ``M``, ``F``, ``O`` compared case-insensitively.

Reasons name the attribute that contradicts, never its values (they go to logs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Demographics:
    """A patient as DICOM describes one (PN, DA and CS values as strings)."""

    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""


def _name_groups(pn: str) -> list[list[str]]:
    groups = []
    for group in pn.split("="):
        components = [" ".join(part.split()).casefold() for part in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append(components)
    return groups


def names_contradict(a: str, b: str) -> bool:
    """Whether two Person Names are of two people (see the module docstring)."""
    for group_a, group_b in zip(_name_groups(a), _name_groups(b), strict=False):
        for part_a, part_b in zip(group_a, group_b, strict=False):
            if part_a and part_b and part_a != part_b:
                return True
    return False


def _differ(a: str, b: str) -> bool:
    a, b = a.strip().upper(), b.strip().upper()
    return bool(a and b and a != b)


def contradictions(known: Demographics, incoming: Demographics) -> list[str]:
    """The demographic attributes on which ``incoming`` contradicts ``known`` (empty: none)."""
    found = []
    if names_contradict(known.patient_name, incoming.patient_name):
        found.append("PatientName")
    if _differ(known.patient_birth_date, incoming.patient_birth_date):
        found.append("PatientBirthDate")
    if _differ(known.patient_sex, incoming.patient_sex):
        found.append("PatientSex")
    return found


def identity_conflict(known: Demographics, incoming: Demographics) -> list[str]:
    """The attributes on which ``incoming`` is another patient than ``known``: PatientID and
    IssuerOfPatientID when the identifier differs, else the contradicting demographics."""
    if (known.patient_id, known.issuer_of_patient_id) != (
        incoming.patient_id,
        incoming.issuer_of_patient_id,
    ):
        differing = []
        if known.patient_id != incoming.patient_id:
            differing.append("PatientID")
        if known.issuer_of_patient_id != incoming.issuer_of_patient_id:
            differing.append("IssuerOfPatientID")
        return differing
    return contradictions(known, incoming)

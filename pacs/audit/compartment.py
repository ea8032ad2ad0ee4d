"""The patient a FHIR resource belongs to, as the identifier audit rows carry (the value a
patient user's ``Subject.patient`` holds), and display names of the agents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pacs.fhir.errors import FhirError
from pacs.fhir.store import FhirStore

PATIENT_LINKS = ("subject", "patient", "beneficiary")
"""Elements by which a resource of the Patient compartment names its patient."""


def identifier_of(patient: Mapping[Any, Any]) -> str:
    """The first identifier value of a Patient ('' when it has none)."""
    for identifier in patient.get("identifier") or []:
        value = identifier.get("value")
        if value:
            return str(value)
    return ""


def patient_by_id(store: FhirStore, patient_id: str) -> str:
    """The identifier of ``Patient/<patient_id>`` ('' when unknown or gone)."""
    try:
        return identifier_of(store.read("Patient", patient_id))
    except FhirError:
        return ""


def patient_of(store: FhirStore, resource: Mapping[Any, Any]) -> str:
    """The identifier of the patient ``resource`` is or belongs to ('' for none)."""
    if resource.get("resourceType") == "Patient":
        return identifier_of(resource)
    for name in PATIENT_LINKS:
        link = resource.get(name)
        reference = link.get("reference", "") if isinstance(link, Mapping) else ""
        if reference.startswith("Patient/"):
            return patient_by_id(store, reference.removeprefix("Patient/"))
    return ""


class AgentNames:
    """Display names of Organizations and Practitioners, read once per instance."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store
        self.known: dict[tuple[str, str], str] = {}

    def __call__(self, resource_type: str, resource_id: str) -> str:
        key = (resource_type, resource_id)
        if key not in self.known:
            self.known[key] = self._name(resource_type, resource_id)
        return self.known[key]

    def _name(self, resource_type: str, resource_id: str) -> str:
        try:
            resource = self.store.read(resource_type, resource_id)
        except FhirError:
            return ""
        name = resource.get("name")
        if isinstance(name, str):  # Organization.name
            return name
        for human in name or []:  # Practitioner.name: HumanName
            text = human.get("text") or " ".join(
                [*human.get("prefix", []), *human.get("given", []), human.get("family", "")]
            )
            if text.strip():
                return str(text).strip()
        return ""

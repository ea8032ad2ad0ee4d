"""Search parameters of each implemented resource type, declared as simple FHIRPath-like paths.

A path is dot-separated element names walked through lists (``series.modality``); several
paths are separated by ``|`` (a choice type names each variant:
``effectiveDateTime|effectivePeriod``).
A reference parameter may name the target types it accepts (``patient`` -> Patient only).
Names follow the R4 SearchParameter registry; the few that are not standard are marked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

TOKEN, REFERENCE, DATE, STRING = "token", "reference", "date", "string"


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter of one resource type."""

    name: str
    type: str
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference: accepted target types (empty: any)
    standard: bool = True

    @property
    def steps(self) -> tuple[tuple[str, ...], ...]:
        """Each path split into its element names."""
        return _steps(self.paths)


_SPEC: dict[str, dict[str, tuple[str, ...]]] = {
    "Patient": {
        "identifier": (TOKEN, "identifier"),
        "name": (STRING, "name"),
        "family": (STRING, "name.family"),
        "given": (STRING, "name.given"),
        "birthdate": (DATE, "birthDate"),
        "gender": (TOKEN, "gender"),
        "active": (TOKEN, "active"),
        "telecom": (TOKEN, "telecom"),
        "address": (STRING, "address"),
        "organization": (REFERENCE, "managingOrganization", "Organization"),
        "general-practitioner": (REFERENCE, "generalPractitioner"),
        "link": (REFERENCE, "link.other"),
    },
    "Organization": {
        "identifier": (TOKEN, "identifier"),
        "name": (STRING, "name|alias"),
        "type": (TOKEN, "type"),
        "active": (TOKEN, "active"),
        "partof": (REFERENCE, "partOf", "Organization"),
        "endpoint": (REFERENCE, "endpoint", "Endpoint"),
    },
    "Practitioner": {
        "identifier": (TOKEN, "identifier"),
        "name": (STRING, "name"),
        "family": (STRING, "name.family"),
        "given": (STRING, "name.given"),
        "active": (TOKEN, "active"),
    },
    "PractitionerRole": {
        "identifier": (TOKEN, "identifier"),
        "practitioner": (REFERENCE, "practitioner", "Practitioner"),
        "organization": (REFERENCE, "organization", "Organization"),
        "role": (TOKEN, "code"),
        "specialty": (TOKEN, "specialty"),
        "active": (TOKEN, "active"),
        "endpoint": (REFERENCE, "endpoint", "Endpoint"),
    },
    "Encounter": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "subject", "Patient"),
        "subject": (REFERENCE, "subject"),
        "status": (TOKEN, "status"),
        "class": (TOKEN, "class"),
        "type": (TOKEN, "type"),
        "date": (DATE, "period"),
        "participant": (REFERENCE, "participant.individual"),
        "practitioner": (REFERENCE, "participant.individual", "Practitioner"),
        "service-provider": (REFERENCE, "serviceProvider", "Organization"),
        "based-on": (REFERENCE, "basedOn", "ServiceRequest"),
        "part-of": (REFERENCE, "partOf", "Encounter"),
        "reason-code": (TOKEN, "reasonCode"),
    },
    "Procedure": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "subject", "Patient"),
        "subject": (REFERENCE, "subject"),
        "status": (TOKEN, "status"),
        "code": (TOKEN, "code"),
        "date": (DATE, "performedDateTime|performedPeriod"),
        "based-on": (REFERENCE, "basedOn"),
        "encounter": (REFERENCE, "encounter", "Encounter"),
    },
    "ServiceRequest": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "subject", "Patient"),
        "subject": (REFERENCE, "subject"),
        "status": (TOKEN, "status"),
        "intent": (TOKEN, "intent"),
        "priority": (TOKEN, "priority"),
        "code": (TOKEN, "code"),
        "category": (TOKEN, "category"),
        "authored": (DATE, "authoredOn"),
        "occurrence": (DATE, "occurrenceDateTime|occurrencePeriod"),
        "requester": (REFERENCE, "requester"),
        "performer": (REFERENCE, "performer"),
        "encounter": (REFERENCE, "encounter", "Encounter"),
        "based-on": (REFERENCE, "basedOn"),
        "requisition": (TOKEN, "requisition"),
    },
    "ImagingStudy": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "subject", "Patient"),
        "subject": (REFERENCE, "subject"),
        "status": (TOKEN, "status"),
        "started": (DATE, "started"),
        "modality": (TOKEN, "series.modality"),
        "bodysite": (TOKEN, "series.bodySite"),
        "series": (TOKEN, "series.uid"),
        "instance": (TOKEN, "series.instance.uid"),
        "dicom-class": (TOKEN, "series.instance.sopClass"),
        "basedon": (REFERENCE, "basedOn"),
        "based-on": (REFERENCE, "basedOn"),  # not standard: alias of basedon
        "encounter": (REFERENCE, "encounter", "Encounter"),
        "endpoint": (REFERENCE, "endpoint|series.endpoint", "Endpoint"),
        "referrer": (REFERENCE, "referrer"),
        "interpreter": (REFERENCE, "interpreter"),
        "reason": (TOKEN, "reasonCode"),
    },
    "DiagnosticReport": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "subject", "Patient"),
        "subject": (REFERENCE, "subject"),
        "status": (TOKEN, "status"),
        "code": (TOKEN, "code"),
        "category": (TOKEN, "category"),
        "conclusion": (TOKEN, "conclusionCode"),
        "date": (DATE, "effectiveDateTime|effectivePeriod"),
        "issued": (DATE, "issued"),
        "based-on": (REFERENCE, "basedOn"),
        "encounter": (REFERENCE, "encounter", "Encounter"),
        "performer": (REFERENCE, "performer"),
        "results-interpreter": (REFERENCE, "resultsInterpreter"),
        "result": (REFERENCE, "result", "Observation"),
        "imaging-study": (REFERENCE, "imagingStudy", "ImagingStudy"),  # not standard
    },
    "Observation": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "subject", "Patient"),
        "subject": (REFERENCE, "subject"),
        "status": (TOKEN, "status"),
        "code": (TOKEN, "code"),
        "category": (TOKEN, "category"),
        "date": (DATE, "effectiveDateTime|effectivePeriod|effectiveInstant"),
        "encounter": (REFERENCE, "encounter", "Encounter"),
        "based-on": (REFERENCE, "basedOn"),
        "part-of": (REFERENCE, "partOf"),
        "derived-from": (REFERENCE, "derivedFrom"),
        "has-member": (REFERENCE, "hasMember"),
        "focus": (REFERENCE, "focus"),
        "device": (REFERENCE, "device"),
        "performer": (REFERENCE, "performer"),
        "value-concept": (TOKEN, "valueCodeableConcept"),
        "value-string": (STRING, "valueString"),
    },
    "Device": {
        "identifier": (TOKEN, "identifier"),
        "status": (TOKEN, "status"),
        "type": (TOKEN, "type"),
        "device-name": (STRING, "deviceName.name"),
        "manufacturer": (STRING, "manufacturer"),
        "model": (STRING, "modelNumber"),
        "patient": (REFERENCE, "patient", "Patient"),
        "organization": (REFERENCE, "owner", "Organization"),
        "version": (TOKEN, "version.value"),  # not standard
    },
    "Provenance": {
        "target": (REFERENCE, "target"),
        "patient": (REFERENCE, "target", "Patient"),
        "agent": (REFERENCE, "agent.who"),
        "agent-type": (TOKEN, "agent.type"),
        "agent-role": (TOKEN, "agent.role"),
        "entity": (REFERENCE, "entity.what"),
        "recorded": (DATE, "recorded"),
        "when": (DATE, "occurredDateTime|occurredPeriod"),
    },
    "Endpoint": {
        "identifier": (TOKEN, "identifier"),
        "name": (STRING, "name"),
        "status": (TOKEN, "status"),
        "connection-type": (TOKEN, "connectionType"),
        "payload-type": (TOKEN, "payloadType"),
        "organization": (REFERENCE, "managingOrganization", "Organization"),
    },
    "Location": {
        "identifier": (TOKEN, "identifier"),
        "name": (STRING, "name|alias"),
        "status": (TOKEN, "status"),
        "type": (TOKEN, "type"),
        "organization": (REFERENCE, "managingOrganization", "Organization"),
        "partof": (REFERENCE, "partOf", "Location"),
    },
    "Condition": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "subject", "Patient"),
        "subject": (REFERENCE, "subject"),
        "code": (TOKEN, "code"),
        "clinical-status": (TOKEN, "clinicalStatus"),
        "category": (TOKEN, "category"),
        "encounter": (REFERENCE, "encounter", "Encounter"),
        "onset-date": (DATE, "onsetDateTime|onsetPeriod"),
        "recorded-date": (DATE, "recordedDate"),
    },
    "Consent": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "patient", "Patient"),
        "status": (TOKEN, "status"),
        "scope": (TOKEN, "scope"),
        "category": (TOKEN, "category"),
        "date": (DATE, "dateTime"),
        "organization": (REFERENCE, "organization", "Organization"),
        "actor": (REFERENCE, "provision.actor.reference"),
        "provision-type": (TOKEN, "provision.type"),  # not standard: permit | deny
    },
    "Appointment": {
        "identifier": (TOKEN, "identifier"),
        "patient": (REFERENCE, "participant.actor", "Patient"),
        "actor": (REFERENCE, "participant.actor"),
        "practitioner": (REFERENCE, "participant.actor", "Practitioner"),
        "status": (TOKEN, "status"),
        "date": (DATE, "start"),
        "service-type": (TOKEN, "serviceType"),
        "based-on": (REFERENCE, "basedOn", "ServiceRequest"),
    },
}

_NOT_STANDARD = {
    ("ImagingStudy", "based-on"),
    ("DiagnosticReport", "imaging-study"),
    ("Device", "version"),
    ("Consent", "provision-type"),
}


@functools.cache
def _steps(paths: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(path.split(".")) for path in paths)


def _build() -> dict[str, dict[str, SearchParam]]:
    table: dict[str, dict[str, SearchParam]] = {}
    for rtype, params in _SPEC.items():
        table[rtype] = {
            name: SearchParam(
                name=name,
                type=spec[0],
                paths=tuple(spec[1].split("|")),
                targets=tuple(spec[2:]),
                standard=(rtype, name) not in _NOT_STANDARD,
            )
            for name, spec in params.items()
        }
    return table


SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = _build()
"""Resource type -> parameter name -> definition."""

RESOURCE_TYPES: tuple[str, ...] = tuple(sorted(SEARCH_PARAMS))
"""Every resource type the server implements."""

COMMON_PARAMS = ("_id", "_lastUpdated")
"""Parameters of every resource type, answered from ``fhir_resource`` itself."""

RESULT_PARAMS = frozenset(
    {"_count", "_offset", "_sort", "_include", "_revinclude", "_summary", "_total", "_format"}
)
"""Parameters that shape the result rather than select resources."""

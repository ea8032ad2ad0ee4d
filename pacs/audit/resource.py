"""An audit row rendered as a FHIR R4 AuditEvent in the IHE BALP shape: the user agent
(requestor, with its network address and roles), the organisation it acts for, the source
(this archive), and the entities: the patient (by identifier), the study (by UID) and the
resource or DIMSE service accessed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

from pacs.audit.access import Protocol

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
USER_SYSTEM = "urn:pacs:user"
AE_SYSTEM = "urn:pacs:ae-title"
DIMSE_SERVICE = "urn:pacs:dimse-service"
DICOM_UID = "urn:dicom:uid"

_ACTION = {"create": "C", "read": "R", "update": "U", "delete": "D", "sign": "U"}
_INTERACTION = {"search": "search-type", "query": "search-type", "sign": "update"}
_DIMSE_TYPE = {
    "C-FIND": ("110112", "Query"),
    "MWL C-FIND": ("110112", "Query"),
    "C-STORE": ("110104", "DICOM Instances Transferred"),
    "C-GET": ("110104", "DICOM Instances Transferred"),
    "C-MOVE": ("110104", "DICOM Instances Transferred"),
    "C-ECHO": ("110100", "Application Activity"),
}

Names = Callable[[str, str], str]
"""(resource type, id) -> display name ('' if unknown): Organization and Practitioner."""


def _no_names(_rtype: str, _rid: str) -> str:
    return ""


def _recorded(value: datetime) -> str:
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _type(row: Mapping[Any, Any]) -> tuple[dict[str, str], list[dict[str, str]]]:
    if row["protocol"] == Protocol.DIMSE:
        code, display = _DIMSE_TYPE.get(row["resource"], ("110100", "Application Activity"))
        service = {"system": DIMSE_SERVICE, "code": row["resource"]}
        return {"system": DCM, "code": code, "display": display}, [service]
    interaction = _INTERACTION.get(row["action"], row["action"])
    return (
        {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        [{"system": RESTFUL_INTERACTION, "code": interaction}],
    )


def _network(address: str) -> dict[str, str] | None:
    if not address:
        return None
    try:
        ip_address(address)
        return {"address": address, "type": "2"}  # IP address
    except ValueError:
        return {"address": address, "type": "1"}  # machine name


def _agents(row: Mapping[Any, Any], names: Names) -> list[dict[str, Any]]:
    ae = row["subject_kind"] == "ae"
    user: dict[str, Any] = {
        "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]}
        if ae
        else {"coding": [{"system": ROLE_CLASS, "code": "AGNT", "display": "agent"}]},
        "who": {
            "identifier": {"system": AE_SYSTEM if ae else USER_SYSTEM, "value": row["user_name"]}
        },
        "requestor": True,
    }
    if row["practitioner"]:
        user["who"]["reference"] = f"Practitioner/{row['practitioner']}"
        display = names("Practitioner", row["practitioner"])
        if display:
            user["who"]["display"] = display
    if row["roles"]:
        user["role"] = [{"text": row["roles"]}]
    network = _network(row["client_address"])
    if network:
        user["network"] = network
    agents = [user]
    if row["organisation"]:
        organisation = names("Organization", row["organisation"]) or row["organisation"]
        agents.append(
            {
                "type": {"coding": [{"system": ROLE_CLASS, "code": "PROV", "display": "provider"}]},
                "who": {
                    "identifier": {"value": row["organisation"]},
                    "display": organisation,
                },
                "requestor": False,
            }
        )
    return agents


def _entities(row: Mapping[Any, Any]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if row["patient_identifier"]:
        entities.append(
            {
                "what": {"identifier": {"value": row["patient_identifier"]}},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if row["study_instance_uid"]:
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": DICOM_UID,
                        "value": f"urn:oid:{row['study_instance_uid']}",
                    }
                },
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
            }
        )
    resource: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "description": row["resource"],
    }
    if row["query"]:
        resource["detail"] = [{"type": "query", "valueString": row["query"]}]
    entities.append(resource)
    return entities


def audit_event(row: Mapping[Any, Any], names: Names = _no_names) -> dict[str, Any]:
    """The AuditEvent of one ``audit_event`` row (``names`` gives display names of the
    organisation and practitioner; patient names are never shown)."""
    event_type, subtype = _type(row)
    dimse = row["protocol"] == Protocol.DIMSE
    outcome = row["outcome"]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(row["pk"]),
        "type": event_type,
        "subtype": subtype,
        "action": _ACTION.get(row["action"], "E"),
        "recorded": _recorded(row["recorded_at"]),
        "outcome": row["outcome_code"],
        "outcomeDesc": f"DIMSE status 0x{outcome:04X}" if dimse else f"HTTP status {outcome}",
        "agent": _agents(row, names),
        "source": {
            "site": "pacs",
            "observer": {"display": "pacs"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": _entities(row),
    }
    if row["break_glass"]:
        reason = {"system": ACT_REASON, "code": "BTG", "display": "break the glass"}
        resource["purposeOfEvent"] = [
            {"coding": [reason], "text": row["break_glass_reason"] or "break the glass"}
        ]
    return resource

"""AI result -> preliminary report: DiagnosticReport, Observations, Device and Provenance.

One AI result (``ai_result`` row) gives:

- a Device per algorithm and version (identifier ``urn:pacs:ai-device|<analysis>@<models>``);
- an Observation per measurement (status ``preliminary``, UCUM units, ``derivedFrom`` the
  ImagingStudy, ``device`` the Device), identifier ``urn:pacs:ai-result|<study>/<version>/
  <analysis>/<key>``; the CT grade as a coded value (``urn:pacs:ct-severity``);
- a DiagnosticReport (status ``preliminary``, LOINC 18748-4 "Diagnostic imaging study",
  category RAD, ``imagingStudy``, ``subject``, ``basedOn``, ``encounter``, ``result``);
- a Provenance: agent the Device, entities the source series and the AI's SEG and SR.

Re-running for the same result updates the same resources (their ids are kept in the
``ai_report`` table); a report already signed off is never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from inference import records as ai_records
from pacs.emr import EmrLinkError
from pacs.emr.identifiers import (
    AI_DEVICE,
    AI_MEASUREMENT,
    AI_RESULT,
    CT_SEVERITY,
    DICOM_UID,
    LOINC,
    OBSERVATION_CATEGORY,
    SNOMED,
    UCUM,
    V2_0074,
)
from pacs.emr.projection import project_study
from pacs.emr.tables import AiReport
from pacs.fhir.errors import ResourceConflict
from pacs.fhir.store import FhirStore
from pacs.index.models import utcnow

log = logging.getLogger(__name__)

REPORT_CODE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
"""DiagnosticReport.code of AI reports."""


@dataclass(frozen=True)
class Measurement:
    """How one ``ai_result.measurements`` key becomes an Observation."""

    display: str
    unit: str = ""  # UCUM; empty for the coded grade
    standard: dict[str, str] | None = None  # an extra coding from a standard terminology
    body_site: dict[str, str] | None = None


_VOLUME = {"system": SNOMED, "code": "118565006", "display": "Volume"}
MEASUREMENTS: dict[str, Measurement] = {
    "right_lung_volume_ml": Measurement(
        "Right lung volume",
        "mL",
        _VOLUME,
        {"system": SNOMED, "code": "3341006", "display": "Right lung structure"},
    ),
    "left_lung_volume_ml": Measurement(
        "Left lung volume",
        "mL",
        _VOLUME,
        {"system": SNOMED, "code": "44029006", "display": "Left lung structure"},
    ),
    "emphysema_index_percent": Measurement("Emphysema index (LAA-950), % of lung volume", "%"),
    "ground_glass_percent": Measurement("Ground-glass opacity, % of lung volume", "%"),
    "consolidation_percent": Measurement("Consolidation, % of lung volume", "%"),
    "involvement_percent": Measurement("Lung involvement, % of lung volume", "%"),
    "ct_severity_grade": Measurement("CT severity grade of lung involvement"),
}
"""The measurements of the CT chest analysis, in report order."""

GRADES = {
    "CT-0": "CT-0: no signs of viral pneumonia",
    "CT-1": "CT-1: mild, involvement < 25 %",
    "CT-2": "CT-2: moderate, involvement 25-50 %",
    "CT-3": "CT-3: severe, involvement 50-75 %",
    "CT-4": "CT-4: critical, involvement >= 75 %",
}
"""The CT severity grades (code -> display)."""


def load_result(session: Session, result_pk: int) -> Mapping[str, Any] | None:
    """One ``ai_result`` row as a mapping, or None."""
    table = ai_records.AI_RESULT
    row = session.execute(select(table).where(table.c.pk == result_pk)).mappings().first()
    return dict(row) if row is not None else None


def result_key(result: Mapping[str, Any]) -> str:
    """``<StudyInstanceUID>/<study version>/<analysis>``: the identifier value of a result."""
    return f"{result['study_instance_uid']}/{result['study_version']}/{result['analysis']}"


def _models(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    raw = result.get("model_versions") or {}
    if isinstance(raw, dict):
        return sorted((str(k), str(v)) for k, v in raw.items())
    return sorted((str(m.get("name")), str(m.get("version"))) for m in raw)


def device_resource(result: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The Device of the algorithm that produced ``result`` and its identifier value."""
    models = _models(result)
    value = f"{result['analysis']}@" + ",".join(f"{n}={v}" for n, v in models)
    device = {
        "resourceType": "Device",
        "identifier": [{"system": AI_DEVICE, "value": value}],
        "status": "active",
        "deviceName": [{"name": str(result["analysis"]), "type": "model-name"}],
        "type": {"text": "AI image analysis algorithm"},
        "version": [{"type": {"text": name}, "value": version} for name, version in models],
    }
    return device, value


def _observation_code(key: str, spec: Measurement) -> dict[str, Any]:
    codings = [{"system": AI_MEASUREMENT, "code": key, "display": spec.display}]
    if spec.standard:
        codings.append(spec.standard)
    return {"coding": codings, "text": spec.display}


def observation(
    result: Mapping[str, Any],
    key: str,
    value: Any,
    context: dict[str, Any],
    status: str = "preliminary",
) -> dict[str, Any]:
    """The Observation of one measurement; ``context`` holds subject, encounter, basedOn,
    effectiveDateTime, the ImagingStudy and Device references."""
    spec = MEASUREMENTS[key]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": AI_RESULT, "value": f"{result_key(result)}/{key}"}],
        "status": status,
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}]}
        ],
        "code": _observation_code(key, spec),
        "subject": context["subject"],
        "effectiveDateTime": context["effective"],
        "derivedFrom": [context["imaging_study"]],
        "device": context["device"],
    }
    for name in ("encounter", "basedOn"):
        if context.get(name):
            resource[name] = context[name]
    if spec.body_site:
        resource["bodySite"] = {"coding": [spec.body_site]}
    if spec.unit:
        resource["valueQuantity"] = {
            "value": round(float(value), 2),
            "unit": spec.unit,
            "system": UCUM,
            "code": spec.unit,
        }
    else:
        code = str(value)
        if code not in GRADES:
            raise EmrLinkError(f"unknown CT severity grade {code!r}")
        resource["valueCodeableConcept"] = {
            "coding": [{"system": CT_SEVERITY, "code": code, "display": GRADES[code]}],
            "text": code,
        }
    return resource


ASSESSMENT_KEYS = ("assessment", "assessment_reason", "assessment_detail")
"""Keys of a result the AI's plausibility gates stopped (``inference.pipeline``): no grade."""


def check_measurements(measurements: Mapping[str, Any]) -> dict[str, Any]:
    """The measurements of a result, checked before anything is written (``EmrLinkError``
    for a grade outside CT-0..CT-4 or a value that is not a number); the assessment keys of
    a not-assessable result are kept as text."""
    checked: dict[str, Any] = {
        key: str(measurements[key]) for key in ASSESSMENT_KEYS if measurements.get(key)
    }
    for key, spec in MEASUREMENTS.items():
        value = measurements.get(key)
        if value is None:
            continue
        if not spec.unit:
            if str(value) not in GRADES:
                raise EmrLinkError(f"unknown CT severity grade {value!r}")
            checked[key] = str(value)
            continue
        try:
            checked[key] = float(value)
        except (TypeError, ValueError):
            raise EmrLinkError(f"{key}: {value!r} is not a number") from None
    return checked


def preliminary_conclusion(measurements: Mapping[str, Any]) -> str:
    """The conclusion of an unreviewed AI report."""
    grade = measurements.get("ct_severity_grade")
    involvement = measurements.get("involvement_percent")
    parts = ["Preliminary AI analysis, not reviewed by a radiologist."]
    if measurements.get("assessment"):
        detail = measurements.get("assessment_detail") or measurements.get("assessment_reason")
        parts.append(f"Not assessable: {detail}.")
    if grade in GRADES:
        parts.append(GRADES[str(grade)] + ".")
    if involvement is not None:
        parts.append(f"Involvement {float(involvement):.1f} % of lung volume.")
    return " ".join(parts)


def _instant(value: Any) -> str:
    moment = value if isinstance(value, datetime) else utcnow()
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.isoformat()


def provenance(
    result: Mapping[str, Any], targets: list[dict[str, str]], device_ref: dict[str, str]
) -> dict[str, Any]:
    """The Provenance of the AI report: the Device as author, the source series used."""
    entities = [
        {
            "role": "source",
            "what": {
                "identifier": {
                    "system": DICOM_UID,
                    "value": f"urn:oid:{result['source_series_instance_uid']}",
                },
                "display": "source CT series",
            },
        }
    ]
    for column, display in (
        ("seg_series_instance_uid", "AI segmentation (DICOM SEG) series"),
        ("sr_series_instance_uid", "AI structured report (DICOM SR) series"),
    ):
        if result.get(column):
            entities.append(
                {
                    "role": "derivation",
                    "what": {
                        "identifier": {"system": DICOM_UID, "value": f"urn:oid:{result[column]}"},
                        "display": display,
                    },
                }
            )
    return {
        "resourceType": "Provenance",
        "target": targets,
        "occurredDateTime": _instant(result.get("created_at")),
        "recorded": _instant(None),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/"
                            "provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": device_ref,
            }
        ],
        "entity": entities,
    }


def publish_result(session: Session, store: FhirStore, result_pk: int, endpoint: str) -> bool:
    """Create or update the preliminary report of one AI result; False if there is nothing
    to do (no such result, or its report is already signed off)."""
    result = load_result(session, result_pk)
    if result is None:
        log.warning("AI result %s not found", result_pk)
        return False
    known = session.scalar(select(AiReport).where(AiReport.result_pk == result_pk))
    if known is not None and known.status != "preliminary":
        log.info("AI result %s already signed off (%s); report kept", result_pk, known.status)
        return False
    measurements = check_measurements(result.get("measurements") or {})
    study = project_study(session, store, str(result["study_instance_uid"]), endpoint)
    if study is None:
        log.warning("study of AI result %s is not in the archive", result_pk)
        return False
    device, device_value = device_resource(result)
    device_id = store.upsert_by_identifier(device, AI_DEVICE, device_value)["id"]
    context: dict[str, Any] = {
        "subject": study["subject"],
        "encounter": study.get("encounter"),
        "basedOn": study.get("basedOn"),
        "effective": study.get("started") or _instant(result.get("created_at")),
        "imaging_study": {"reference": f"ImagingStudy/{study['id']}"},
        "device": {"reference": f"Device/{device_id}"},
    }
    observation_ids: dict[str, str] = {}
    for key in MEASUREMENTS:
        if measurements.get(key) is None:
            continue
        resource = observation(result, key, measurements[key], context)
        value = resource["identifier"][0]["value"]
        observation_ids[key] = str(store.upsert_by_identifier(resource, AI_RESULT, value)["id"])
    report = diagnostic_report(result, context, observation_ids, measurements)
    report_id = str(store.upsert_by_identifier(report, AI_RESULT, result_key(result))["id"])
    targets = [{"reference": f"DiagnosticReport/{report_id}"}] + [
        {"reference": f"Observation/{oid}"} for oid in observation_ids.values()
    ]
    prov = provenance(result, targets, context["device"])
    if known is not None and known.provenance_id:
        provenance_id = str(
            store.update("Provenance", known.provenance_id, {**prov, "id": known.provenance_id})[
                "id"
            ]
        )
    else:
        provenance_id = str(store.create(prov)["id"])
    _remember(session, store, result, report_id, provenance_id, observation_ids, known)
    return True


def diagnostic_report(
    result: Mapping[str, Any],
    context: dict[str, Any],
    observation_ids: dict[str, str],
    measurements: Mapping[str, Any],
    status: str = "preliminary",
) -> dict[str, Any]:
    """The DiagnosticReport of an AI result."""
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": AI_RESULT, "value": result_key(result)}],
        "status": status,
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [REPORT_CODE], "text": "CT chest, AI analysis"},
        "subject": context["subject"],
        "effectiveDateTime": context["effective"],
        "issued": _instant(result.get("created_at")),
        "imagingStudy": [context["imaging_study"]],
        "result": [{"reference": f"Observation/{oid}"} for oid in observation_ids.values()],
        "conclusion": preliminary_conclusion(measurements),
    }
    for name in ("encounter", "basedOn"):
        if context.get(name):
            report[name] = context[name]
    return report


def _remember(
    session: Session,
    store: FhirStore,
    result: Mapping[str, Any],
    report_id: str,
    provenance_id: str,
    observation_ids: dict[str, str],
    known: AiReport | None,
) -> None:
    """Record the resource ids of ``result`` in ``ai_report`` (a write transaction of its
    own: the session only reads)."""
    session.rollback()
    values = {
        "diagnostic_report_id": report_id,
        "provenance_id": provenance_id,
        "observation_ids": observation_ids,
        "updated_at": utcnow(),
    }
    try:
        with store.write_transaction() as conn:
            if known is None:
                conn.execute(
                    insert(AiReport).values(
                        result_pk=int(result["pk"]),
                        study_instance_uid=str(result["study_instance_uid"]),
                        status="preliminary",
                        created_at=utcnow(),
                        **values,
                    )
                )
            else:
                conn.execute(update(AiReport).where(AiReport.pk == known.pk).values(**values))
    except ResourceConflict:  # another node recorded the same result meanwhile
        log.info("AI result %s was recorded by another node", result["pk"])

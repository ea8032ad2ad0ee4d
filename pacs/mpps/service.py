"""The MPPS state machine (PS3.4 F.7) and what each state means for the referral.

- N-CREATE (status ``IN PROGRESS`` only): the step is stored; the referral is the active
  ServiceRequest whose accession number (else RequestedProcedureID) the
  ScheduledStepAttributesSequence names; a FHIR Procedure (``in-progress``, ``basedOn`` the
  referral, identifier ``urn:dicom:uid`` = the MPPS SOP Instance UID) is created and the step
  leaves the worklist. An unscheduled step (no referral found) is stored without a Procedure.
- N-SET: attributes replaced; ``COMPLETED`` -> Procedure ``completed`` (the referral stays
  ``active`` until its report is signed); ``DISCONTINUED`` -> Procedure ``stopped`` and the
  referral ``on-hold`` (the RIS reschedules or revokes it), except with the discontinuation
  reason "Incorrect worklist entry selected" (DCM 110514): Procedure ``entered-in-error``,
  and the step is offered on the worklist again.
- A step that is ``COMPLETED`` or ``DISCONTINUED`` may no longer be updated (0110, Error ID
  A710); an unknown instance is 0112; a second N-CREATE of one UID 0111; a bad status 0106.
- Access (``scope``: the caller's worklist reach, ``pacs.security.fhir_scope.worklist_scope``;
  None = unrestricted): an N-CREATE whose referral is outside it, and an N-SET of a step
  whose referral is outside it (or, unscheduled, that another AE created), are refused
  0124 (not authorized) and change nothing.

The row, the Procedure and the referral change in one database transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Connection, Engine, insert, select, update

from pacs.emr.identifiers import DICOM_UID, accession_of
from pacs.errors import PacsError
from pacs.fhir.errors import ResourceConflict, ResourceNotFound
from pacs.fhir.resources import found
from pacs.fhir.store import FhirStore
from pacs.fhir.values import escape_search_value
from pacs.index.models import utcnow
from pacs.mpps.tables import PerformedProcedureStep

log = logging.getLogger(__name__)

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
STATUSES = frozenset({IN_PROGRESS, COMPLETED, DISCONTINUED})
WRONG_WORKLIST_ENTRY = ("110514", "DCM")
"""PS3.16 CID 9300: "Incorrect worklist entry selected"."""
_PROCEDURE_STATUS = {IN_PROGRESS: "in-progress", COMPLETED: "completed", DISCONTINUED: "stopped"}

INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
NOT_AUTHORIZED = 0x0124
"""PS3.7 C.4 "Refused: not authorized"."""
MAY_NO_LONGER_BE_UPDATED = 0xA710
"""PS3.4 F.7.2.2.4 Error ID: Performed Procedure Step Object may no longer be updated."""


class MppsError(PacsError):
    """A refused N-CREATE / N-SET: the DIMSE status (and Error ID) to answer."""

    def __init__(self, message: str, status: int, error_id: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id


@dataclass(frozen=True)
class StepState:
    """The stored state of one step after an operation."""

    sop_instance_uid: str
    status: str
    service_request_id: str
    procedure_id: str
    holds_step: bool


def _status_of(dataset: Dataset) -> str:
    return str(dataset.get("PerformedProcedureStepStatus", "") or "").strip().upper()


def _fhir_date_time(date: str, time: str) -> str:
    if len(date) != 8:
        return ""
    text = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = time.split(".")[0]
    if len(digits) < 4:
        return text
    moment = datetime.strptime(text + digits[:4] + (digits[4:6] or "00"), "%Y-%m-%d%H%M%S")
    return moment.astimezone().isoformat()


def _wrong_entry(dataset: Dataset) -> bool:
    for code in dataset.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []:
        if (str(code.get("CodeValue", "")), str(code.get("CodingSchemeDesignator", ""))) == (
            WRONG_WORKLIST_ENTRY
        ):
            return True
    return False


class MppsService:
    """N-CREATE / N-SET of Modality Performed Procedure Steps over the index and FHIR store."""

    def __init__(self, engine: Engine, store: FhirStore | None = None) -> None:
        self.engine = engine
        self.store = store or FhirStore(engine)

    def create(
        self,
        uid: str,
        attributes: Dataset,
        calling_ae_title: str = "",
        scope: ColumnElement[bool] | None = None,
    ) -> StepState:
        """Store a new step (N-CREATE) for a caller whose worklist reach is ``scope``; raise
        :class:`MppsError` when it is refused."""
        status = _status_of(attributes)
        if status != IN_PROGRESS:
            raise MppsError(
                f"PerformedProcedureStepStatus must be IN PROGRESS on N-CREATE, not {status!r}",
                INVALID_ATTRIBUTE_VALUE,
            )
        try:
            with self.store.write_transaction() as conn:
                if self._row(conn, uid) is not None:
                    raise MppsError(f"MPPS {uid} exists already", DUPLICATE_SOP_INSTANCE)
                referral = self._referral(conn, attributes)
                if referral is not None and not self._reaches(conn, referral["id"], scope):
                    raise MppsError(
                        "the scheduled step is not on the caller's worklist", NOT_AUTHORIZED
                    )
                procedure_id = ""
                if referral is not None:
                    procedure = self._procedure(uid, attributes, referral, IN_PROGRESS)
                    procedure_id = self.store.tx_create(conn, procedure).resource["id"]
                service_request_id = str((referral or {}).get("id") or "")
                conn.execute(
                    insert(PerformedProcedureStep).values(
                        sop_instance_uid=uid,
                        status=IN_PROGRESS,
                        service_request_id=service_request_id,
                        procedure_id=procedure_id,
                        holds_step=True,
                        calling_ae_title=calling_ae_title[:16],
                        attributes=attributes.to_json_dict(),
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )
        except ResourceConflict:  # a concurrent N-CREATE of the same UID won
            raise MppsError(f"MPPS {uid} exists already", DUPLICATE_SOP_INSTANCE) from None
        log.info("MPPS %s IN PROGRESS from %s", uid, calling_ae_title or "?")
        return StepState(uid, IN_PROGRESS, service_request_id, procedure_id, True)

    def set(
        self,
        uid: str,
        modifications: Dataset,
        calling_ae_title: str = "",
        scope: ColumnElement[bool] | None = None,
    ) -> StepState:
        """Apply an N-SET from ``calling_ae_title`` whose worklist reach is ``scope``; raise
        :class:`MppsError` when it is refused."""
        new_status = _status_of(modifications)
        if "PerformedProcedureStepStatus" in modifications and new_status not in STATUSES:
            raise MppsError(
                f"PerformedProcedureStepStatus {new_status!r} is not a valid state",
                INVALID_ATTRIBUTE_VALUE,
            )
        with self.store.write_transaction() as conn:
            row = self._row(conn, uid)
            if row is None:
                raise MppsError(f"no MPPS {uid}", NO_SUCH_OBJECT_INSTANCE)
            if not self._may_update(conn, row, calling_ae_title, scope):
                raise MppsError(f"MPPS {uid} is not the caller's to update", NOT_AUTHORIZED)
            if row.status != IN_PROGRESS:
                raise MppsError(
                    f"MPPS {uid} is {row.status} and may no longer be updated",
                    PROCESSING_FAILURE,
                    MAY_NO_LONGER_BE_UPDATED,
                )
            merged = Dataset.from_json(row.attributes)
            for element in modifications:
                merged[element.tag] = element
            status = new_status or IN_PROGRESS
            wrong_entry = status == DISCONTINUED and _wrong_entry(merged)
            holds_step = status != DISCONTINUED
            if row.procedure_id:
                self._update_procedure(conn, row.procedure_id, uid, merged, status, wrong_entry)
            if status == DISCONTINUED and not wrong_entry and row.service_request_id:
                self._hold_referral(conn, row.service_request_id)
            conn.execute(
                update(PerformedProcedureStep)
                .where(PerformedProcedureStep.sop_instance_uid == uid)
                .values(
                    status=status,
                    holds_step=holds_step,
                    attributes=merged.to_json_dict(),
                    updated_at=utcnow(),
                )
            )
        log.info("MPPS %s %s", uid, status)
        return StepState(uid, status, row.service_request_id, row.procedure_id, holds_step)

    def attributes(self, uid: str) -> Dataset | None:
        """The stored attributes of a step, None if unknown."""
        with self.engine.connect() as conn:
            row = self._row(conn, uid)
        return None if row is None else Dataset.from_json(row.attributes)

    # ------------------------------------------------------------------ internals

    def _row(self, conn: Connection, uid: str) -> Any:
        return conn.execute(
            select(PerformedProcedureStep.__table__).where(
                PerformedProcedureStep.sop_instance_uid == uid
            )
        ).first()

    def _reaches(
        self, conn: Connection, service_request_id: str, scope: ColumnElement[bool] | None
    ) -> bool:
        """Whether the ServiceRequest is within ``scope`` (a worklist reach)."""
        if scope is None:
            return True
        try:
            self.store.tx_read(conn, "ServiceRequest", service_request_id, scope)
        except ResourceNotFound:
            return False
        return True

    def _may_update(
        self, conn: Connection, row: Any, calling_ae_title: str, scope: ColumnElement[bool] | None
    ) -> bool:
        """A step is updated by a caller whose worklist holds its referral; an unscheduled
        one only by the AE that created it."""
        if scope is None:
            return True
        if row.service_request_id:
            return self._reaches(conn, row.service_request_id, scope)
        return bool(calling_ae_title) and row.calling_ae_title == calling_ae_title[:16]

    def _referral(self, conn: Connection, attributes: Dataset) -> dict[str, Any] | None:
        """The active ServiceRequest the step performs (by accession number, else by
        RequestedProcedureID)."""
        for item in attributes.get("ScheduledStepAttributesSequence") or []:
            for keyword in ("AccessionNumber", "RequestedProcedureID"):
                value = str(item.get(keyword, "") or "").strip()
                if not value:
                    continue
                bundle = self.store.tx_search(
                    conn,
                    "ServiceRequest",
                    [("identifier", escape_search_value(value)), ("status", "active")],
                )
                requests = found(bundle, "ServiceRequest")
                if keyword == "AccessionNumber":
                    requests = [r for r in requests if accession_of(r) == value]
                if requests:
                    return requests[0]
        return None

    def _procedure(
        self, uid: str, attributes: Dataset, referral: dict[str, Any], status: str
    ) -> dict[str, Any]:
        procedure: dict[str, Any] = {
            "resourceType": "Procedure",
            "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{uid}"}],
            "basedOn": [{"reference": f"ServiceRequest/{referral['id']}"}],
            "status": _PROCEDURE_STATUS[status],
            "subject": referral["subject"],
        }
        for key in ("code", "encounter"):
            if referral.get(key) and not str(referral[key].get("reference", "")).startswith("#"):
                procedure[key] = referral[key]
        period = self._period(attributes)
        if period:
            procedure["performedPeriod"] = period
        return procedure

    def _period(self, attributes: Dataset) -> dict[str, str]:
        period = {}
        for key, prefix in (
            ("start", "PerformedProcedureStepStart"),
            ("end", "PerformedProcedureStepEnd"),
        ):
            value = _fhir_date_time(
                str(attributes.get(f"{prefix}Date", "") or ""),
                str(attributes.get(f"{prefix}Time", "") or ""),
            )
            if value:
                period[key] = value
        return period

    def _update_procedure(
        self,
        conn: Connection,
        procedure_id: str,
        uid: str,
        attributes: Dataset,
        status: str,
        wrong_entry: bool,
    ) -> None:
        procedure = self.store.tx_read(conn, "Procedure", procedure_id)
        procedure["status"] = "entered-in-error" if wrong_entry else _PROCEDURE_STATUS[status]
        period = self._period(attributes)
        if period:
            procedure["performedPeriod"] = period
        self.store.tx_update(conn, "Procedure", procedure_id, procedure)

    def _hold_referral(self, conn: Connection, service_request_id: str) -> None:
        referral = self.store.tx_read(conn, "ServiceRequest", service_request_id)
        if referral.get("status") == "active":
            self.store.tx_update(
                conn, "ServiceRequest", service_request_id, {**referral, "status": "on-hold"}
            )

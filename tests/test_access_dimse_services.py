"""The access policy over every DIMSE service: each service the handlers bind has its rule
(``pacs.dimse.access``), and MPPS and Storage Commitment pass it against a running archive
(SQLite and PostgreSQL) with pynetdicom as two modalities of organisations A and B:

- an MPPS N-CREATE for a step on another organisation's worklist is refused 0124 and stores
  nothing; an N-SET of another organisation's step is refused 0124;
- a Storage Commitment request commits only instances within the caller's reach: another
  organisation's are listed as failed with 0112, as unknown ones are;
- every request is audited."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs.audit.tables import AuditEvent
from pacs.dimse.access import EVENTS, SERVICES, permitted
from pacs.dimse.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from pacs.dimse.handlers import Handlers
from pacs.dimse.mpps import MODALITY_PERFORMED_PROCEDURE_STEP
from pacs.dimse.policy import AEPolicy
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.mpps.service import MppsService
from pacs.security.subject import Role, Subject, SubjectKind
from testkit.dicom_factory import write_ct_series
from tests.conftest import Backend, RunningArchive, require_tool, start_archive, stop_archive
from tests.dimse_tools import storescu

# ---------------------------------------------------------------- the service table


def _bound_events() -> set[str]:
    """The pynetdicom intervention events a fully equipped worker binds."""
    stub = SimpleNamespace(
        on_n_create=lambda e: None, on_n_set=lambda e: None, on_n_action=lambda e: None
    )
    handlers = Handlers(cast(Any, None), AEPolicy((), False), cast(Any, stub))
    handlers.find = handlers.worklist = handlers.mpps = handlers.commitment = cast(Any, stub)
    return {event.name for event, _ in handlers.bindings() if event.is_intervention}


def test_every_dimse_service_has_a_policy_row() -> None:
    bound = _bound_events() - {"EVT_C_ECHO"}  # no patient data
    assert {"EVT_C_STORE", "EVT_N_CREATE", "EVT_N_SET", "EVT_N_ACTION"} <= bound
    assert sorted(bound - set(EVENTS)) == [], "DIMSE services without a policy row"
    assert sorted(set(EVENTS) - bound) == [], "policy rows of no bound DIMSE service"
    named = {service for services in EVENTS.values() for service in services}
    assert named == set(SERVICES)


def _ae(roles: set[Role], organisation: str = "", scopes: frozenset[str] = frozenset()) -> Subject:
    return Subject("AE", SubjectKind.AE, frozenset(roles), organisation, scopes=scopes)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dimse_service_matrix(service: str) -> None:
    """The subjects a calling AE can be (``pacs.dimse.policy.CallingAE``) and others."""
    expectations = {
        "modality of an organisation": (_ae({Role.MODALITY}, "OrgA"), True),
        "modality without organisation": (_ae({Role.MODALITY}), True),  # reaches no data
        "trusted local system": (_ae({Role.SYSTEM}, scopes=frozenset({"system/*.cruds"})), True),
        "system without scopes": (_ae({Role.SYSTEM}), service.startswith(("MWL", "MPPS"))),
        "no role": (_ae(set(), "OrgA"), False),
        "analyst": (_ae({Role.ANALYST}, "OrgA"), False),
    }
    wrong = [
        name
        for name, (subject, allowed) in expectations.items()
        if bool(permitted(subject, service)) != allowed
    ]
    assert wrong == []


# ---------------------------------------------------------------- against a running archive

ALLOWED = "CTA@127.0.0.1=OrgA,CTB@127.0.0.1=OrgB"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Scene:
    archive: RunningArchive
    instances: dict[str, str]  # organisation -> a SOPInstanceUID it stored
    accession: str  # of a referral OrgA performs


def _referral(store: FhirStore, accession: str, performer: str) -> None:
    store.update("Organization", performer, {"resourceType": "Organization", "id": performer})
    patient = store.create(
        {"resourceType": "Patient", "identifier": [{"system": "urn:pid", "value": "P-A"}]}
    )
    store.create(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "identifier": [{"system": "urn:pacs:accession", "value": accession,
                            "type": {"coding": [{
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "ACSN"}]}}],
            "subject": {"reference": f"Patient/{patient['id']}"},
            "performer": [{"reference": f"Organization/{performer}"}],
        }
    )  # fmt: skip


@pytest.fixture
def scene(db_backend: Backend, tmp_path: Path) -> Iterator[Scene]:
    require_tool("storescu")
    archive = start_archive(
        db_backend, tmp_path / "serve.log", PACS_ACCEPT_ANY_AE="false", PACS_ALLOWED_AES=ALLOWED
    )
    engine = create_index_engine(archive.backend.settings)
    try:
        instances = {}
        for org, aet, pid in (("OrgA", "CTA", "P-A"), ("OrgB", "CTB", "P-B")):
            paths = write_ct_series(tmp_path / org, slices=1, size=16, patient_id=pid)
            assert len(storescu(archive.dicom_port, paths, aet=aet).succeeded) == 1
            instances[org] = str(dcmread(paths[0]).SOPInstanceUID)
        _referral(FhirStore(engine), "ACC-A", "OrgA")
        yield Scene(archive, instances, "ACC-A")
    finally:
        engine.dispose()
        stop_archive(archive)


def _step(accession: str) -> Dataset:
    ds = Dataset()
    ds.PatientID = "P-A"
    step = Dataset()
    step.AccessionNumber = accession
    step.StudyInstanceUID = generate_uid()
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    return ds


class Modality:
    """One association of a modality AE: MPPS and Storage Commitment (reports it receives)."""

    def __init__(self, archive: RunningArchive, title: str) -> None:
        ae = AE(ae_title=title)
        ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        self.reports: list[tuple[int, Dataset]] = []
        self.received = threading.Event()
        self.assoc = ae.associate(
            "127.0.0.1",
            archive.dicom_port,
            ae_title="PACS",
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        assert self.assoc.is_established

    def _on_report(self, event: Any) -> tuple[int, None]:
        self.reports.append((event.request.EventTypeID, event.event_information))
        self.received.set()
        return 0x0000, None

    def create(self, uid: str, accession: str) -> int:
        status, _ = self.assoc.send_n_create(
            _step(accession), MODALITY_PERFORMED_PROCEDURE_STEP, uid
        )
        return int(status.Status)

    def complete(self, uid: str) -> int:
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = self.assoc.send_n_set(done, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
        return int(status.Status)

    def commit(self, instances: list[str]) -> tuple[int, Dataset]:
        request = Dataset()
        request.TransactionUID = generate_uid()
        items = []
        for uid in instances:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT_IMAGE, uid
            items.append(item)
        request.ReferencedSOPSequence = Sequence(items)
        status, _ = self.assoc.send_n_action(
            request, 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )
        assert status.Status == 0x0000
        assert self.received.wait(30), "no N-EVENT-REPORT"
        return self.reports[-1]

    def release(self) -> None:
        self.assoc.release()


def test_mpps_passes_the_policy(scene: Scene) -> None:
    a, b = Modality(scene.archive, "CTA"), Modality(scene.archive, "CTB")
    engine = create_index_engine(scene.archive.backend.settings)
    try:
        foreign = generate_uid()
        assert b.create(foreign, scene.accession) == 0x0124
        assert MppsService(engine).attributes(foreign) is None  # nothing stored
        own = generate_uid()
        assert a.create(own, scene.accession) == 0x0000
        assert b.complete(own) == 0x0124
        assert a.complete(own) == 0x0000
        unscheduled = generate_uid()
        assert b.create(unscheduled, "NO-SUCH") == 0x0000  # its own, unscheduled
        assert a.complete(unscheduled) == 0x0124
        assert b.complete(unscheduled) == 0x0000
    finally:
        a.release()
        b.release()
    with Session(engine) as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.resource.like("MPPS%")).order_by(AuditEvent.pk)
        ).all()
    engine.dispose()
    assert [(r.user_name, r.resource, r.outcome, r.organisation) for r in rows] == [
        ("CTB", "MPPS N-CREATE", 0x0124, "OrgB"),
        ("CTA", "MPPS N-CREATE", 0x0000, "OrgA"),
        ("CTB", "MPPS N-SET", 0x0124, "OrgB"),
        ("CTA", "MPPS N-SET", 0x0000, "OrgA"),
        ("CTB", "MPPS N-CREATE", 0x0000, "OrgB"),
        ("CTA", "MPPS N-SET", 0x0124, "OrgA"),
        ("CTB", "MPPS N-SET", 0x0000, "OrgB"),
    ]
    assert rows[1].patient_identifier == "P-A"


def test_storage_commitment_commits_within_the_callers_reach(scene: Scene) -> None:
    a = Modality(scene.archive, "CTA")
    mine, theirs = scene.instances["OrgA"], scene.instances["OrgB"]
    try:
        event_type, info = a.commit([mine, theirs])
    finally:
        a.release()
    assert event_type == 2
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [mine]
    failures = {f.ReferencedSOPInstanceUID: f.FailureReason for f in info.FailedSOPSequence}
    assert failures == {theirs: 0x0112}
    engine = create_index_engine(scene.archive.backend.settings)
    with Session(engine) as session:
        [row] = session.scalars(
            select(AuditEvent).where(AuditEvent.resource == "Storage Commitment N-ACTION")
        ).all()
    engine.dispose()
    assert (row.user_name, row.organisation, row.outcome) == ("CTA", "OrgA", 0x0112)
    assert row.query.endswith("committed=1 failed=1")

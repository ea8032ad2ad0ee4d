"""Modality Worklist mapping: ServiceRequest -> item, MWL matching keys, character sets."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from pacs.dimse.policy import AEPolicy, CallingAE
from pacs.dimse.worklist import MODALITY_WORKLIST_FIND, WorklistService
from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine, session_factory
from pacs.ingest import Source
from pacs.runtime import build_ingest
from pacs.worklist import WorklistQueryError, item_from_service_request, matches, response
from pacs.worklist.items import WorklistItem
from pacs.worklist.source import WorklistSource, prefilter
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESOURCES: dict[tuple[str, str], dict[str, Any]] = {
    ("Patient", "p1"): {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {"system": "urn:oid:1.2.643.100.3", "value": "112-233-445 95"},
            {
                "type": {"coding": [{"system": V2, "code": "MR"}]},
                "system": "urn:oid:1.2.3.4",
                "value": "MRN1",
            },
        ],
        "name": [{"family": "Петров", "given": ["Иван", "Сергеевич"]}],
        "birthDate": "1970-02-03",
        "gender": "female",
    },
    ("Practitioner", "d1"): {"resourceType": "Practitioner", "name": [{"family": "Smith"}]},
    ("PractitionerRole", "r1"): {
        "resourceType": "PractitionerRole",
        "practitioner": {"reference": "Practitioner/d2"},
        "organization": {"reference": "Organization/o1"},
    },
    ("Practitioner", "d2"): {"resourceType": "Practitioner", "name": [{"text": "Dr Who"}]},
    ("Organization", "o1"): {"resourceType": "Organization", "name": "City Hospital 1"},
    ("Encounter", "e1"): {"resourceType": "Encounter", "identifier": [{"value": "CASE-9"}]},
}


def request(**changes: Any) -> dict[str, Any]:
    """An active CT referral."""
    base: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "status": "active",
        "intent": "order",
        "priority": "stat",
        "identifier": [
            {"type": {"coding": [{"system": V2, "code": "ACSN"}]}, "system": "x", "value": "A1"}
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}],
            "text": "CT chest",
        },
        "category": [{"coding": [{"system": DCM, "code": "CT"}]}],
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": "Practitioner/d1"},
        "performer": [{"reference": "PractitionerRole/r1"}],
        "encounter": {"reference": "Encounter/e1"},
        "occurrenceDateTime": "2026-11-26T14:05:30+03:00",
    }
    base.update(changes)
    return base


def item_of(service_request: dict[str, Any]) -> WorklistItem | None:
    return item_from_service_request(
        service_request,
        lambda kind, rid: RESOURCES.get((kind, rid)),
        lambda name: ["CT01", "CT02"] if name == "City Hospital 1" else [],
    )


def query(step: dict[str, Any] | None = None, **top: Any) -> Dataset:
    ds = Dataset()
    for key, value in top.items():
        setattr(ds, key, value)
    sps = Dataset()
    for key, value in (step or {}).items():
        setattr(sps, key, value)
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def test_service_request_maps_to_a_scheduled_step() -> None:
    item = item_of(request())
    assert item is not None
    assert (item.accession_number, item.requested_procedure_id) == ("A1", "A1")
    assert item.requested_procedure_code == ("24627-2", "LN", "CT Chest")
    assert (item.modality, item.scheduled_station_ae_titles) == ("CT", ("CT01", "CT02"))
    assert (item.start_date, item.start_time) == ("20261126", "140530")
    assert item.scheduled_performing_physician_name == "Dr Who"
    assert item.referring_physician_name == "Smith"
    assert item.requested_procedure_priority == "STAT"
    assert (item.patient_id, item.issuer_of_patient_id) == ("MRN1", "1.2.3.4")
    assert (item.patient_name, item.patient_sex) == ("Петров^Иван^Сергеевич", "F")
    assert item.admission_id == "CASE-9"
    assert item.study_instance_uid == item_of(request()).study_instance_uid  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "completed"},
        {"identifier": [{"system": "urn:other", "value": "A1"}]},
        {"category": [], "code": {"text": "no modality"}},
        {"subject": {"reference": "Group/g1"}},
    ],
)
def test_requests_that_cannot_be_scheduled_are_left_out(changes: dict[str, Any]) -> None:
    assert item_of(request(**changes)) is None


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        (query(PatientName="петров*"), True),
        (query(PatientName="ПЕТРОВ^ИВАН^СЕРГЕЕВИЧ"), True),
        (query(PatientName="Иванов*"), False),
        (query(PatientID="MRN1", IssuerOfPatientID="1.2.3.4"), True),
        (query(PatientID="MRN?"), True),
        (query(PatientID="MRN2"), False),
        (query(AccessionNumber="A1"), True),
        (query({"ScheduledStationAETitle": "CT02"}), True),
        (query({"ScheduledStationAETitle": "MR01"}), False),
        (query({"Modality": "CT"}), True),
        (query({"Modality": "MR"}), False),
        (query({"ScheduledProcedureStepStartDate": "20261126"}), True),
        (query({"ScheduledProcedureStepStartDate": "20261120-20261125"}), False),
        (query({"ScheduledProcedureStepStartDate": "20261126-"}), True),
        (query({"ScheduledProcedureStepStartDate": "-20261125"}), False),
        (query({"ScheduledProcedureStepStartTime": "1400-1500"}), True),
        (query({"ScheduledProcedureStepStartTime": "1500-"}), False),
        (query({"ScheduledProcedureStepStatus": "SCHEDULED"}), True),
        (query(PatientName="", AccessionNumber=""), True),
    ],
)
def test_matching_keys(identifier: Dataset, expected: bool) -> None:
    item = item_of(request())
    assert item is not None
    assert matches(identifier, item) is expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_malformed_date_is_a_query_error() -> None:
    item = item_of(request())
    assert item is not None
    with pytest.raises(WorklistQueryError):
        matches(query({"ScheduledProcedureStepStartDate": "2026112x"}), item)


def _encoded(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


def test_response_has_the_requested_keys_in_the_requested_character_set() -> None:
    item = item_of(request())
    assert item is not None
    identifier = query(
        {"Modality": "", "ScheduledStationAETitle": ""},
        SpecificCharacterSet="ISO_IR 144",
        PatientName="",
        AccessionNumber="",
        OtherPatientIDs="",
    )
    identifier.RequestedProcedureCodeSequence = Sequence()
    out = response(identifier, item)
    assert out.SpecificCharacterSet == "ISO_IR 144"
    assert "Петров^Иван".encode("iso8859_5") in _encoded(out)
    assert "OtherPatientIDs" in out and not out.OtherPatientIDs  # unsupported: empty
    assert out.RequestedProcedureCodeSequence[0].CodeValue == "24627-2"
    assert list(out.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == ["CT01", "CT02"]
    assert "ScheduledProcedureStepStartDate" not in out.ScheduledProcedureStepSequence[0]


def test_response_charset_defaults_to_utf8_and_an_empty_step_asks_for_all() -> None:
    item = item_of(request())
    assert item is not None
    identifier = Dataset()
    identifier.PatientName = ""
    identifier.ScheduledProcedureStepSequence = Sequence()
    out = response(identifier, item)
    assert out.SpecificCharacterSet == "ISO_IR 192"
    step = out.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledProcedureStepStartDate) == ("CT", "20261126")
    latin = Dataset()
    latin.AccessionNumber = ""
    assert "SpecificCharacterSet" not in response(latin, item)


def test_store_prefilter_widens_the_date_by_a_day() -> None:
    params = prefilter(
        query({"ScheduledProcedureStepStartDate": "20261126-20261127"}, AccessionNumber="A1")
    )
    assert params == [
        ("status", "active"),
        ("identifier", "A1"),
        ("occurrence", "ge2026-11-25"),
        ("occurrence", "le2026-11-28"),
    ]
    assert prefilter(query(AccessionNumber="A*")) == [("status", "active")]


def test_identifier_values_are_escaped_for_token_search() -> None:
    from pacs.emr.identifiers import token_search_value

    assert token_search_value("A,1") == "A\\,1"
    assert token_search_value("A|1$\\") == "A\\|1\\$\\\\"
    assert token_search_value("") is None
    assert prefilter(query(AccessionNumber="A|1")) == [
        ("status", "active"),
        ("identifier", "A\\|1"),
    ]


def _mwl_c_find(source: WorklistSource, accession: str) -> list[Dataset]:
    """The pending responses of an MWL C-FIND for ``accession``, through the SCP's handler."""
    identifier = Dataset()
    identifier.AccessionNumber = accession
    identifier.ScheduledProcedureStepSequence = Sequence([Dataset()])
    event = SimpleNamespace(
        request=SimpleNamespace(AffectedSOPClassUID=MODALITY_WORKLIST_FIND),
        identifier=identifier,
        is_cancelled=False,
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="MOD", address="127.0.0.1")),
    )
    callers = CallingAE(AEPolicy([], accept_any=True), session_factory(source.engine), "127.0.0.1")
    answers = list(WorklistService(source, callers).on_c_find(event))  # type: ignore[arg-type]
    assert answers[-1] == (0x0000, None)
    return [match for _, match in answers[:-1] if match is not None]


@pytest.mark.parametrize("remove_on_arrival", [False, True])
def test_step_leaves_the_worklist_on_arrival_only_when_configured(
    db_backend: Backend, remove_on_arrival: bool
) -> None:
    """PACS_WORKLIST_REMOVE_ON_ARRIVAL: the step goes once a study with its accession number
    is stored; otherwise it stays until the referral is completed (a signed report)."""
    settings = db_backend.settings
    engine = create_index_engine(settings)
    ingest = build_ingest(settings)
    store = FhirStore(engine)
    patient = store.create(
        {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "MRN-77"}]}
    )
    body = request(subject={"reference": f"Patient/{patient['id']}"})
    for unused in ("id", "requester", "performer", "encounter"):
        del body[unused]
    body["identifier"][0]["value"] = "A77"
    referral = store.create(body)
    source = WorklistSource(store, engine, remove_on_arrival=remove_on_arrival)
    assert [m.AccessionNumber for m in _mwl_c_find(source, "A77")] == ["A77"]
    stored = io.BytesIO()
    ct_slice(generate_uid(), generate_uid(), 0, 8, accession_number="A77").save_as(
        stored, enforce_file_format=True
    )
    assert ingest.store_part10(stored.getvalue(), Source("dimse", "CT01")).status.ok
    assert len(_mwl_c_find(source, "A77")) == (0 if remove_on_arrival else 1)
    store.update("ServiceRequest", referral["id"], {**referral, "status": "completed"})
    assert _mwl_c_find(source, "A77") == []
    engine.dispose()
    ingest.engine.dispose()

"""Patient identity at ingest: a UID held for another patient (or SOP Instance in another
series) is refused or quarantined, never filed; the quarantine's release and discard; two
senders racing two patients into one new study; on SQLite + filesystem and PostgreSQL + S3."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from pacs.config import DuplicatePolicy, IdentityConflictPolicy
from pacs.identity import Demographics, contradictions, identity_conflict, names_contradict
from pacs.index.models import Instance, Patient, Series, Study
from pacs.ingest import IngestService, StoreStatus
from pacs.ingest.quarantine import QuarantineError, list_held
from pacs.ingest.release import discard, release
from pacs.storage import open_store
from tests.conftest import Backend
from tests.test_ingest import SOURCE, ct, encode, ingest_for, rows

PATIENT_2 = {
    "PatientID": "OTHER-2",
    "PatientName": "Other^Person",
    "PatientBirthDate": "19580312",
    "PatientSex": "F",
}


# ---------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("a", "b", "contradict"),
    [
        ("DOE^JOHN", "doe^john", False),
        ("DOE^JOHN^^^", "DOE^JOHN", False),
        (" DOE ^ JOHN ", "DOE^JOHN", False),
        ("DOE^JOHN", "DOE", False),  # a missing component is not a contradiction
        ("", "DOE^JOHN", False),
        ("DOE^JOHN=ドウ^ジョン", "DOE^JOHN", False),
        ("DOE^JOHN", "DOE^JANE", True),
        ("DOE^JOHN", "ROE^JOHN", True),
        ("DOE^JOHN=ドウ^ジョン", "DOE^JOHN=ロウ^ジョン", True),
    ],
)
def test_person_names(a: str, b: str, contradict: bool) -> None:
    assert names_contradict(a, b) is contradict
    assert names_contradict(b, a) is contradict


def test_demographics_contradict_only_when_both_present() -> None:
    known = Demographics("1", "", "DOE^JOHN", "19700101", "M")
    assert contradictions(known, Demographics("1", "", "", "", "")) == []
    assert contradictions(known, Demographics("1", "", "doe^john^^", "19700101", "m")) == []
    assert contradictions(known, Demographics("1", "", "DOE^JANE", "19700102", "F")) == [
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
    ]
    assert identity_conflict(known, Demographics("2", "", "DOE^JOHN")) == ["PatientID"]
    assert identity_conflict(known, Demographics("1", "HOSP", "DOE^JOHN")) == ["IssuerOfPatientID"]


# ---------------------------------------------------------------- refused


def _patient_ids(backend: Backend) -> list[str]:
    return [p.patient_id for p in rows(backend.settings, Patient)]


def test_study_uid_of_another_patient_is_refused(backend: Backend) -> None:
    ingest = ingest_for(backend)
    study, series = generate_uid(), generate_uid()
    first = ingest.store_part10(encode(ct(study, series, 0)), SOURCE)
    assert first.status is StoreStatus.STORED
    # the second patient's series in the first patient's study
    outcome = ingest.store_part10(encode(ct(study, generate_uid(), 0, **PATIENT_2)), SOURCE)
    assert outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert not outcome.status.ok
    assert outcome.reason == "StudyInstanceUID of another patient (PatientID)"
    assert "OTHER" not in outcome.reason  # no patient identifiers in what is logged
    # the same series UID for the second patient
    outcome = ingest.store_part10(encode(ct(study, series, 1, **PATIENT_2)), SOURCE)
    assert outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert outcome.reason.startswith("SeriesInstanceUID of another patient")
    assert _patient_ids(backend) == ["PHANTOM-1"]
    assert len(rows(backend.settings, Instance)) == 1
    assert len(rows(backend.settings, Series)) == 1
    assert rows(backend.settings, Study)[0].number_of_study_related_instances == 1


def test_contradicting_demographics_are_refused(db_backend: Backend) -> None:
    ingest = ingest_for(db_backend)
    study, series = generate_uid(), generate_uid()
    assert ingest.store_part10(encode(ct(study, series, 0)), SOURCE).status.ok
    # same PatientID, another birth date and sex: another person
    other = ct(study, series, 1, PatientBirthDate="19580312", PatientSex="F")
    outcome = ingest.store_part10(encode(other), SOURCE)
    assert outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert outcome.reason == ("SeriesInstanceUID of another patient (birth date, sex)")
    # a new study with that PatientID and a contradicting name is not filed under it either
    renamed = ct(generate_uid(), generate_uid(), 0, PatientName="Someone^Else")
    outcome = ingest.store_part10(encode(renamed), SOURCE)
    assert outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert outcome.reason == "PatientID of another patient (name)"
    # without a PatientID only identifiers are compared: objects without one share one
    # patient row whose demographics are the first such object's (an empty ID claims nothing)
    anonymous = ct(generate_uid(), generate_uid(), 0, PatientID="", PatientName="A^B")
    assert ingest.store_part10(encode(anonymous), SOURCE).status is StoreStatus.STORED
    stranger = ct(generate_uid(), generate_uid(), 0, PatientID="", PatientName="C^D")
    assert ingest.store_part10(encode(stranger), SOURCE).status is StoreStatus.STORED
    intruder = ct(anonymous.StudyInstanceUID, generate_uid(), 1)  # PHANTOM-1
    assert ingest.store_part10(encode(intruder), SOURCE).reason == (
        "StudyInstanceUID of another patient (PatientID)"
    )
    # empty values and the spelling of a name do not contradict
    same = ct(study, series, 2, PatientName="PHANTOM^CHEST^^", PatientSex="", PatientBirthDate="")
    assert ingest.store_part10(encode(same), SOURCE).status is StoreStatus.STORED
    assert len(rows(db_backend.settings, Instance)) == 4


def test_series_of_another_study_is_refused(db_backend: Backend) -> None:
    ingest = ingest_for(db_backend)
    series = generate_uid()
    assert ingest.store_part10(encode(ct(generate_uid(), series, 0)), SOURCE).status.ok
    outcome = ingest.store_part10(encode(ct(generate_uid(), series, 1)), SOURCE)
    assert outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert outcome.reason == "SeriesInstanceUID is in another study"
    assert len(rows(db_backend.settings, Study)) == 1


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
def test_sop_instance_of_another_series_is_refused_whatever_the_duplicate_policy(
    db_backend: Backend, policy: DuplicatePolicy
) -> None:
    ingest = ingest_for(db_backend, duplicate_policy=policy)
    ds = ct(generate_uid(), generate_uid(), 0)
    assert ingest.store_part10(encode(ds), SOURCE).status is StoreStatus.STORED
    moved = ct(ds.StudyInstanceUID, generate_uid(), 0, SOPInstanceUID=ds.SOPInstanceUID)
    moved.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    outcome = ingest.store_part10(encode(moved), SOURCE)
    assert outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert outcome.reason.startswith("SOPInstanceUID is in another series")
    other_study = ct(generate_uid(), generate_uid(), 0, SOPInstanceUID=ds.SOPInstanceUID)
    other_study.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    assert ingest.store_part10(encode(other_study), SOURCE).reason.startswith(
        "SOPInstanceUID is in another study"
    )
    # the same SOP Instance for another patient (overwrite would have replaced it)
    swapped = ct(ds.StudyInstanceUID, ds.SeriesInstanceUID, 0, **PATIENT_2)
    swapped.SOPInstanceUID = swapped.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    outcome = ingest.store_part10(encode(swapped), SOURCE)
    assert outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert outcome.reason == "SOPInstanceUID of another patient (PatientID)"
    [instance] = rows(db_backend.settings, Instance)
    assert _patient_ids(db_backend) == ["PHANTOM-1"]
    assert instance.series_pk == rows(db_backend.settings, Series)[0].pk


def test_two_patients_racing_into_one_new_study(backend: Backend) -> None:
    """Two senders store two patients into the same new study at the same moment: exactly
    one patient's objects are in the study, the other's are refused, every round."""
    services = [ingest_for(backend), ingest_for(backend)]
    for _ in range(8):
        study, series_1, series_2 = generate_uid(), generate_uid(), generate_uid()
        objects = [
            [encode(ct(study, series_1, i)) for i in range(3)],
            [encode(ct(study, series_2, i, **PATIENT_2)) for i in range(3)],
        ]
        barrier = threading.Barrier(2)
        outcomes: list[list[StoreStatus]] = [[], []]

        threads = [
            threading.Thread(target=_send, args=(barrier, services[n], objects[n], outcomes[n]))
            for n in (0, 1)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        counts = [Counter(o) for o in outcomes]
        winners = [n for n in (0, 1) if counts[n][StoreStatus.STORED] == 3]
        assert len(winners) == 1, counts
        assert counts[1 - winners[0]][StoreStatus.IDENTITY_CONFLICT] == 3, counts
        [row] = [s for s in rows(backend.settings, Study) if s.study_instance_uid == study]
        assert row.number_of_study_related_instances == 3
        assert row.number_of_study_related_series == 1


def _send(
    barrier: threading.Barrier, ingest: IngestService, objects: list[bytes], out: list[Any]
) -> None:
    barrier.wait()
    for data in objects:
        out.append(ingest.store_part10(data, SOURCE).status)


# ---------------------------------------------------------------- quarantine


def _quarantine(backend: Backend) -> IngestService:
    return ingest_for(backend, identity_conflict=IdentityConflictPolicy.QUARANTINE)


def test_quarantine_holds_the_object_out_of_the_index(backend: Backend) -> None:
    ingest = _quarantine(backend)
    study, series = generate_uid(), generate_uid()
    assert ingest.store_part10(encode(ct(study, series, 0)), SOURCE).status.ok
    intruder = encode(ct(study, series, 1, **PATIENT_2))
    outcome = ingest.store_part10(intruder, SOURCE)
    assert outcome.status is StoreStatus.QUARANTINED
    assert ingest.store_part10(intruder, SOURCE).status is StoreStatus.QUARANTINED  # again
    [held] = list_held(ingest.engine)
    assert (held.patient_id, held.study_instance_uid) == ("OTHER-2", study)
    assert held.reason.startswith("SeriesInstanceUID of another patient")
    assert held.source == SOURCE
    assert open_store(backend.settings).get(held.object_key) == intruder  # durable, exact
    assert len(rows(backend.settings, Instance)) == 1
    assert _patient_ids(backend) == ["PHANTOM-1"]
    # a plain release re-checks: the conflict is still there, it stays held
    done = release(ingest, held.pk)
    assert not done.released
    assert done.outcome.status is StoreStatus.IDENTITY_CONFLICT
    assert [h.pk for h in list_held(ingest.engine)] == [held.pk]
    # discard removes entry and object
    discard(ingest, held.pk)
    assert list_held(ingest.engine) == []
    with pytest.raises(KeyError):
        open_store(backend.settings).get(held.object_key)
    with pytest.raises(QuarantineError):
        discard(ingest, held.pk)


def test_release_as_a_new_study_keeps_one_study_per_patient(db_backend: Backend) -> None:
    ingest = _quarantine(db_backend)
    study, series = generate_uid(), generate_uid()
    assert ingest.store_part10(encode(ct(study, series, 0)), SOURCE).status.ok
    for i in range(3):
        ds = ct(study, series, i + 1, **PATIENT_2)
        assert ingest.store_part10(encode(ds), SOURCE).status is StoreStatus.QUARANTINED
    released = [release(ingest, held.pk, as_new_study=True) for held in list_held(ingest.engine)]
    assert all(r.released for r in released)
    new_study = {r.outcome.study_instance_uid for r in released}
    assert len(new_study) == 1 and study not in new_study
    assert list_held(ingest.engine) == []
    studies = {s.study_instance_uid: s for s in rows(db_backend.settings, Study)}
    assert studies[new_study.pop()].number_of_study_related_instances == 3
    assert sorted(_patient_ids(db_backend)) == ["OTHER-2", "PHANTOM-1"]
    stored = open_store(db_backend.settings)
    instance = next(i for i in rows(db_backend.settings, Instance) if i.instance_number == 2)
    ds = dcmread(__import__("io").BytesIO(stored.get(instance.object_key)))
    [modified] = ds.OriginalAttributesSequence
    assert modified.ReasonForTheAttributeModification == "CORRECT"
    assert modified.ModifiedAttributesSequence[0].StudyInstanceUID == study
    assert modified.ModifiedAttributesSequence[0].SeriesInstanceUID == series


def test_release_once_the_conflict_is_gone(db_backend: Backend) -> None:
    """The first patient's object was the wrong one: discarded from the index by the
    administrator (here: a quarantined competitor released after the other was removed)."""
    ingest = _quarantine(db_backend)
    study, series = generate_uid(), generate_uid()
    first = ct(study, series, 0, **PATIENT_2)
    assert ingest.store_part10(encode(first), SOURCE).status is StoreStatus.STORED
    assert ingest.store_part10(encode(ct(study, series, 1)), SOURCE).status.name == "QUARANTINED"
    [held] = list_held(ingest.engine)
    _remove_study(db_backend, study)
    done = release(ingest, held.pk)
    assert done.released, done.outcome
    assert _patient_ids(db_backend)[-1] == "PHANTOM-1"
    assert list_held(ingest.engine) == []


def _remove_study(backend: Backend, study_uid: str) -> None:
    """Delete a study's rows (what an administrator's correction at the source ends in)."""
    from pacs.index.engine import create_index_engine, session_factory

    engine = create_index_engine(backend.settings)
    with session_factory(engine)() as session:
        study = session.query(Study).filter_by(study_instance_uid=study_uid).one()
        for series in list(study.series):
            for instance in list(series.instances):
                session.delete(instance)
            session.delete(series)
        patient: Any = study.patient
        session.delete(study)
        session.flush()
        session.delete(patient)
        session.commit()
    engine.dispose()

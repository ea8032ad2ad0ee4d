"""The one ingest path: stored, duplicate, conflicts, invalid objects, counters, character
sets, concurrency and failure injection, on SQLite + filesystem and PostgreSQL + S3."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError

from pacs import runtime
from pacs.config import DuplicatePolicy, Settings
from pacs.errors import StorageError
from pacs.index.engine import create_index_engine, session_factory
from pacs.index.models import Instance, Patient, Series, Study
from pacs.index.prepared import Prepared
from pacs.ingest import IngestOutcome, IngestService, Source, StoreStatus
from pacs.ingest.acceptance import AcceptanceWarning
from pacs.runtime import build_ingest
from pacs.storage import instance_key, open_store
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend
from tests.test_storage import stored_names

SOURCE = Source(channel="import", ae_title="MODALITY1", host="10.0.0.7", organisation="Clinic 1")


def encode(ds: Dataset) -> bytes:
    """The Part-10 bytes of ``ds``."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct(study: str, series: str, index: int = 0, **attributes: Any) -> Dataset:
    """A small CT slice with some attributes changed."""
    ds = ct_slice(study, series, index, size=16)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def rows(settings: Settings, model: Any) -> list[Any]:
    """Every row of one index table, ordered by primary key."""
    engine = create_index_engine(settings)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(model).order_by(model.pk)).all())
    finally:
        engine.dispose()


def assert_index_empty(settings: Settings) -> None:
    for model in (Patient, Study, Series, Instance):
        assert rows(settings, model) == [], model.__tablename__


def ingest_for(backend: Backend, **overrides: Any) -> IngestService:
    return build_ingest(backend.with_settings(**overrides))


# ---------------------------------------------------------------- stored / duplicate


def test_stored_object_is_byte_exact_and_fully_indexed(backend: Backend) -> None:
    ingest = ingest_for(backend)
    study, series = generate_uid(), generate_uid()
    ds = ct(study, series, 4)
    data = encode(ds)
    outcome = ingest.store_part10(data, SOURCE)
    assert outcome == IngestOutcome(StoreStatus.STORED, ds.SOPInstanceUID, study)
    assert outcome.status.ok

    [row] = rows(backend.settings, Instance)
    digest = hashlib.sha256(data).hexdigest()
    assert row.sha256 == digest
    assert row.size_bytes == len(data)
    assert row.object_key == instance_key(study, series, ds.SOPInstanceUID, digest)
    assert row.sop_class_uid == ds.SOPClassUID
    assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert (row.instance_number, row.rows, row.columns) == (5, 16, 16)
    assert (row.source_ae_title, row.source_host, row.source_organisation) == (
        "MODALITY1",
        "10.0.0.7",
        "Clinic 1",
    )
    assert open_store(backend.settings).get(row.object_key) == data
    assert stored_names(open_store(backend.settings)) == {row.object_key}

    [patient] = rows(backend.settings, Patient)
    assert (patient.patient_id, patient.patient_name) == ("PHANTOM-1", "Phantom^Chest")
    assert (patient.patient_birth_date, patient.patient_sex) == ("19700101", "O")
    [study_row] = rows(backend.settings, Study)
    assert study_row.study_instance_uid == study
    assert study_row.patient_pk == patient.pk
    assert (study_row.accession_number, study_row.study_description) == ("ACC0001", "CT CHEST")
    [series_row] = rows(backend.settings, Series)
    assert (series_row.series_instance_uid, series_row.modality) == (series, "CT")
    assert (series_row.series_number, series_row.body_part_examined) == (1, "CHEST")
    assert series_row.source_organisation == "Clinic 1"


def test_identical_resend_is_idempotent(backend: Backend) -> None:
    ingest = ingest_for(backend)
    data = encode(ct(generate_uid(), generate_uid()))
    assert ingest.store_part10(data, SOURCE).status is StoreStatus.STORED
    for _ in range(3):
        again = ingest.store_part10(data, SOURCE)
        assert again.status is StoreStatus.DUPLICATE
        assert again.status.ok
    [row] = rows(backend.settings, Instance)
    [study] = rows(backend.settings, Study)
    [series] = rows(backend.settings, Series)
    assert study.number_of_study_related_instances == 1
    assert series.number_of_series_related_instances == 1
    assert study.size_bytes == len(data)
    assert stored_names(open_store(backend.settings)) == {row.object_key}


# ---------------------------------------------------------------- conflicts


def conflicting_pair() -> tuple[bytes, bytes, str]:
    """Two different objects with the same SOP Instance UID (the second is larger)."""
    first = ct(generate_uid(), generate_uid())
    second = ct(first.StudyInstanceUID, first.SeriesInstanceUID, ImageComments="re-sent " * 40)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    return encode(first), encode(second), first.SOPInstanceUID


@pytest.mark.parametrize(
    ("policy", "status"),
    [
        (DuplicatePolicy.REJECT, StoreStatus.CONFLICT_REJECTED),
        (DuplicatePolicy.KEEP, StoreStatus.CONFLICT_KEPT),
    ],
)
def test_conflict_keeps_the_first_object(
    backend: Backend, policy: DuplicatePolicy, status: StoreStatus
) -> None:
    ingest = ingest_for(backend, duplicate_policy=policy)
    first, second, sop_uid = conflicting_pair()
    assert ingest.store_part10(first, SOURCE).status is StoreStatus.STORED
    outcome = ingest.store_part10(second, SOURCE)
    assert outcome.status is status
    assert not outcome.status.ok
    assert outcome.sop_instance_uid == sop_uid
    assert outcome.reason

    [row] = rows(backend.settings, Instance)
    assert row.sha256 == hashlib.sha256(first).hexdigest()
    store = open_store(backend.settings)
    assert store.get(row.object_key) == first  # byte-exact first object
    assert stored_names(store) == {row.object_key}  # the second left nothing behind
    [study] = rows(backend.settings, Study)
    assert (study.number_of_study_related_instances, study.size_bytes) == (1, len(first))
    assert ingest.store_part10(first, SOURCE).status is StoreStatus.DUPLICATE


def test_conflict_overwrite_replaces_object_and_row(backend: Backend) -> None:
    ingest = ingest_for(backend, duplicate_policy=DuplicatePolicy.OVERWRITE)
    first, second, sop_uid = conflicting_pair()
    assert ingest.store_part10(first, SOURCE).status is StoreStatus.STORED
    [old] = rows(backend.settings, Instance)

    outcome = ingest.store_part10(second, Source(channel="stow", ae_title="OTHER"))
    assert outcome.status is StoreStatus.REPLACED
    assert outcome.status.ok

    [new] = rows(backend.settings, Instance)
    assert new.sop_instance_uid == sop_uid
    assert new.sha256 == hashlib.sha256(second).hexdigest()
    assert new.size_bytes == len(second)
    assert new.source_ae_title == "OTHER"
    assert new.object_key != old.object_key
    store = open_store(backend.settings)
    assert store.get(new.object_key) == second
    assert not store.exists(old.object_key)  # the replaced object is deleted
    assert stored_names(store) == {new.object_key}
    [study] = rows(backend.settings, Study)
    [series] = rows(backend.settings, Series)
    assert study.number_of_study_related_instances == 1  # counters unchanged
    assert study.number_of_study_related_series == 1
    assert series.number_of_series_related_instances == 1
    assert study.size_bytes == len(second)
    assert ingest.store_part10(second, SOURCE).status is StoreStatus.DUPLICATE


# ---------------------------------------------------------------- invalid / too large


def _with(**attributes: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        return encode(ct(generate_uid(), generate_uid(), **attributes))

    return make


def encode_as_is(ds: Dataset) -> bytes:
    """Part-10 bytes with the file meta exactly as set (pydicom would otherwise fix it)."""
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


INVALID: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "garbage": lambda: os.urandom(4096),
    "text": lambda: b"not a dicom file\n" * 20,
    "preamble only": lambda: b"\0" * 128 + b"DICM",
    "DICM then garbage": lambda: b"\0" * 128 + b"DICM" + os.urandom(500),
    "truncated in the file meta": lambda: _with()()[:150],
    "truncated in the data set": lambda: _with()()[:400],
    "blank StudyInstanceUID": _with(StudyInstanceUID=""),
    "blank SeriesInstanceUID": _with(SeriesInstanceUID=""),
    "no SOPInstanceUID": lambda: encode(_without("SOPInstanceUID")),
    "letters in a UID": _with(StudyInstanceUID="1.2.abc"),
    "leading zero in a UID": _with(SeriesInstanceUID="1.02.3"),
    "UID over 64 characters": _with(StudyInstanceUID="1." + "2" * 63),
    "path in a UID": _with(SeriesInstanceUID="1.2.3/../../x"),
}


def _without(keyword: str) -> Dataset:
    ds = ct(generate_uid(), generate_uid())
    delattr(ds, keyword)
    return ds


def test_invalid_objects_are_refused_and_leave_nothing(backend: Backend) -> None:
    ingest = ingest_for(backend)
    outcomes = {name: ingest.store_part10(make(), SOURCE) for name, make in INVALID.items()}
    wrong = {n: o for n, o in outcomes.items() if o.status is not StoreStatus.INVALID}
    assert wrong == {}
    assert all(o.reason for o in outcomes.values())
    assert "StudyInstanceUID" in outcomes["blank StudyInstanceUID"].reason
    assert "SeriesInstanceUID" in outcomes["leading zero in a UID"].reason
    assert_index_empty(backend.settings)
    assert stored_names(open_store(backend.settings)) == set()


def test_sop_class_mismatch_is_stored_under_the_data_sets_class(backend: Backend) -> None:
    ds = ct(generate_uid(), generate_uid())
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    outcome = ingest_for(backend).store_part10(encode_as_is(ds), SOURCE)
    assert outcome.status is StoreStatus.STORED
    assert outcome.warnings == (AcceptanceWarning.SOP_CLASS_UID_DIFFERS,)
    [instance] = rows(backend.settings, Instance)
    assert instance.sop_class_uid == ds.SOPClassUID


def test_object_truncated_in_pixel_data_is_refused(backend: Backend) -> None:
    data = encode(ct(generate_uid(), generate_uid()))
    outcome = ingest_for(backend).store_part10(data[:-100], SOURCE)
    assert outcome.status is StoreStatus.INVALID
    assert_index_empty(backend.settings)


def test_too_large_object_is_refused(backend: Backend) -> None:
    data = encode(ct(generate_uid(), generate_uid()))
    outcome = ingest_for(backend, max_object_size=len(data) - 1).store_part10(data, SOURCE)
    assert outcome.status is StoreStatus.TOO_LARGE
    assert not outcome.status.ok
    assert_index_empty(backend.settings)
    assert stored_names(open_store(backend.settings)) == set()
    exact = ingest_for(backend, max_object_size=len(data)).store_part10(data, SOURCE)
    assert exact.status is StoreStatus.STORED  # the limit itself is allowed


# ---------------------------------------------------------------- counters


def test_study_and_series_counters(backend: Backend) -> None:
    ingest = ingest_for(backend)
    study, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    objects = [encode(ct(study, ct_series, i)) for i in range(3)]
    objects += [encode(ct(study, mr_series, i, Modality="MR", SeriesNumber=2)) for i in range(2)]
    for data in objects:
        assert ingest.store_part10(data, SOURCE).status is StoreStatus.STORED
    assert ingest.store_part10(objects[0], SOURCE).status is StoreStatus.DUPLICATE

    [row] = rows(backend.settings, Study)
    assert row.number_of_study_related_series == 2
    assert row.number_of_study_related_instances == 5
    assert row.modalities_in_study == "CT\\MR"
    assert row.size_bytes == sum(len(d) for d in objects)
    assert row.updated_at >= row.created_at
    series = {s.series_instance_uid: s for s in rows(backend.settings, Series)}
    assert series[ct_series].number_of_series_related_instances == 3
    assert series[mr_series].number_of_series_related_instances == 2
    assert series[mr_series].modality == "MR"
    assert len(rows(backend.settings, Instance)) == 5
    assert len(stored_names(open_store(backend.settings))) == 5


# ---------------------------------------------------------------- character sets

DESCRIPTION = "\u041a\u0422 \u041e\u0413\u041a"  # "KT OGK" in Cyrillic (chest CT)


@pytest.mark.parametrize(
    ("charset", "codec"), [("ISO_IR 144", "iso8859_5"), ("ISO_IR 192", "utf-8")]
)
def test_cyrillic_patient_name(backend: Backend, charset: str, codec: str) -> None:
    name = "Иванов^Иван Петрович"
    ds = ct(generate_uid(), generate_uid(), SpecificCharacterSet=charset, PatientName=name)
    ds.StudyDescription = DESCRIPTION
    data = encode(ds)
    assert "Иванов".encode(codec) in data  # really written in that character set
    assert ingest_for(backend).store_part10(data, SOURCE).status is StoreStatus.STORED
    [patient] = rows(backend.settings, Patient)
    assert patient.patient_name == name
    [study] = rows(backend.settings, Study)
    assert study.study_description == DESCRIPTION
    assert study.specific_character_set == charset
    [instance] = rows(backend.settings, Instance)
    assert open_store(backend.settings).get(instance.object_key) == data  # bytes unchanged


# ---------------------------------------------------------------- concurrency


def test_concurrent_ingest_of_one_study(backend: Backend) -> None:
    """8 threads at once: some send the same instance, others different ones of one study."""
    concurrent_rounds(backend)


def test_concurrent_ingest_into_the_filesystem_store(db_backend: Backend) -> None:
    """The same race on each database with the filesystem store (one directory per series)."""
    concurrent_rounds(db_backend)


def concurrent_rounds(backend: Backend) -> None:
    """Three rounds of 8 threads sending 5 instances (3 of them twice) of a new study."""
    ingest = ingest_for(backend)
    threads = 8
    expected_series: dict[str, int] = {}
    all_outcomes: list[IngestOutcome] = []
    for _round in range(3):  # each round races to create a new patient, study and series
        study, series = generate_uid(), generate_uid()
        distinct = [encode(ct(study, series, i)) for i in range(5)]
        work = [distinct[i % len(distinct)] for i in range(threads)]  # 3 sent twice
        barrier = threading.Barrier(threads)
        outcomes: list[IngestOutcome] = []
        errors: list[BaseException] = []

        def send(
            data: bytes,
            outcomes: list[IngestOutcome] = outcomes,
            errors: list[BaseException] = errors,
            barrier: threading.Barrier = barrier,
        ) -> None:
            try:
                barrier.wait(timeout=30)
                outcomes.append(ingest.store_part10(data, SOURCE))
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=send, args=(data,)) for data in work]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=120)
        assert errors == []
        statuses = Counter(o.status for o in outcomes)
        assert statuses == {StoreStatus.STORED: 5, StoreStatus.DUPLICATE: 3}, [
            (o.status, o.reason) for o in outcomes if not o.status.ok
        ]
        expected_series[series] = 5
        all_outcomes += outcomes

    studies = rows(backend.settings, Study)
    assert len(studies) == 3
    assert {
        (s.number_of_study_related_series, s.number_of_study_related_instances) for s in studies
    } == {(1, 5)}
    assert {s.modalities_in_study for s in studies} == {"CT"}
    series_rows = rows(backend.settings, Series)
    assert {
        s.series_instance_uid: s.number_of_series_related_instances for s in series_rows
    } == expected_series
    assert len(rows(backend.settings, Patient)) == 1
    instances = rows(backend.settings, Instance)
    assert len(instances) == 15
    for study_row in studies:
        keys = [
            i
            for i in instances
            if i.series_pk in {s.pk for s in series_rows if s.study_pk == study_row.pk}
        ]
        assert study_row.size_bytes == sum(i.size_bytes for i in keys)
    assert stored_names(open_store(backend.settings)) == {i.object_key for i in instances}
    assert len(all_outcomes) == 24


# ---------------------------------------------------------------- failure injection


class BrokenStore:
    """An object store whose writes fail (disk full, S3 down)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.puts = 0

    def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        raise StorageError("injected: no space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_storage_failure_is_failed_and_indexes_nothing(backend: Backend) -> None:
    ingest = ingest_for(backend)
    broken = BrokenStore(ingest.store)
    ingest.store = broken
    data = encode(ct(generate_uid(), generate_uid()))
    outcome = ingest.store_part10(data, SOURCE)
    assert outcome.status is StoreStatus.FAILED
    assert not outcome.status.ok
    assert "injected" in outcome.reason
    assert broken.puts == 1
    assert_index_empty(backend.settings)
    ingest.store = broken.inner  # the store recovers: the re-send succeeds
    assert ingest.store_part10(data, SOURCE).status is StoreStatus.STORED


@pytest.fixture
def failing_statement(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """``arm(prefix, contains)``: the ingest engine's next statements starting with ``prefix``
    and containing ``contains`` raise a database error (after the object was written)."""
    engines: list[Engine] = []
    rules: list[tuple[str, str]] = []
    real = runtime.create_index_engine

    def capture(settings: Settings) -> Engine:
        engine = real(settings)
        engines.append(engine)

        event.listen(engine, "before_cursor_execute", _fail)
        return engine

    real_prepared = Prepared.execute

    def prepared_execute(self: Prepared, conn: Any, params: dict[str, Any]) -> Any:
        # the hot-path statements run on the DBAPI cursor, past the engine's events
        sql, _ = self._compiled.get(conn.dialect.name) or self._compile(conn)
        _fail(None, None, sql)
        return real_prepared(self, conn, params)

    def _fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sql = " ".join(statement.split()).upper()
        for prefix, contains in rules:
            if sql.startswith(prefix) and contains in sql:
                raise OperationalError(statement, None, Exception("injected"))

    monkeypatch.setattr(runtime, "create_index_engine", capture)
    monkeypatch.setattr(Prepared, "execute", prepared_execute)
    yield lambda prefix, contains: rules.append((prefix.upper(), contains.upper()))
    rules.clear()
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize(
    ("prefix", "contains"),
    [
        ("INSERT INTO INSTANCE", ""),  # the instance row itself
        ("UPDATE STUDY", "NUMBER_OF_STUDY_RELATED_INSTANCES"),  # the last statements
    ],
)
def test_database_failure_removes_the_written_object(
    backend: Backend, failing_statement: Callable[[str, str], None], prefix: str, contains: str
) -> None:
    ingest = ingest_for(backend)
    data = encode(ct(generate_uid(), generate_uid()))
    failing_statement(prefix, contains)
    outcome = ingest.store_part10(data, SOURCE)
    assert outcome.status is StoreStatus.FAILED
    assert not outcome.status.ok
    assert stored_names(open_store(backend.settings)) == set()  # the object was removed
    assert_index_empty(backend.settings)  # the whole transaction was rolled back


def test_database_failure_during_overwrite_keeps_the_old_version(
    backend: Backend, failing_statement: Callable[[str, str], None]
) -> None:
    ingest = ingest_for(backend, duplicate_policy=DuplicatePolicy.OVERWRITE)
    first, second, _ = conflicting_pair()
    assert ingest.store_part10(first, SOURCE).status is StoreStatus.STORED
    failing_statement("INSERT INTO INSTANCE", "")
    assert ingest.store_part10(second, SOURCE).status is StoreStatus.FAILED
    [row] = rows(backend.settings, Instance)
    assert row.sha256 == hashlib.sha256(first).hexdigest()
    store = open_store(backend.settings)
    assert store.get(row.object_key) == first
    assert stored_names(store) == {row.object_key}
    [study] = rows(backend.settings, Study)
    assert (study.number_of_study_related_instances, study.size_bytes) == (1, len(first))


def test_unreachable_database_is_failed_and_stores_nothing(backend: Backend) -> None:
    ingest = ingest_for(backend, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    outcome = ingest.store_part10(encode(ct(generate_uid(), generate_uid())), SOURCE)
    assert outcome.status is StoreStatus.FAILED
    assert outcome.reason.startswith("index")
    assert stored_names(open_store(backend.settings)) == set()

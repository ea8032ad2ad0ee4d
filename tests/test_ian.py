"""Instance Availability Notification: ``study.stable`` -> N-CREATE IAN at the configured
AEs (a pynetdicom SCP as the receiver), on SQLite and PostgreSQL; a receiver that is down
gets it once it is back."""

from __future__ import annotations

import io
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from pacs.aes import AESpec, migrated_session, put_ae
from pacs.changes import record
from pacs.ian import INSTANCE_AVAILABILITY_NOTIFICATION, IanFeed
from pacs.index.engine import WRITE, create_index_engine
from pacs.ingest import Source
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice
from testkit.net import free_port
from tests.conftest import Backend


def _store_study(backend: Backend, slices: int) -> tuple[str, list[str]]:
    ingest = build_ingest(backend.settings)
    study, series = generate_uid(), generate_uid()
    uids = []
    try:
        for i in range(slices):
            ds = ct_slice(study, series, i, 8)
            data = io.BytesIO()
            ds.save_as(data, enforce_file_format=True)
            assert ingest.store_part10(data.getvalue(), Source("dimse", "CT01")).status.ok
            uids.append(str(ds.SOPInstanceUID))
    finally:
        ingest.engine.dispose()
    return study, uids


def test_stable_study_is_announced_to_each_destination(db_backend: Backend) -> None:
    port = free_port()
    settings = db_backend.with_settings(ian_destinations=("RIS1",))
    with migrated_session(settings) as session:
        put_ae(session, AESpec("RIS1", "127.0.0.1", port))
    study, uids = _store_study(db_backend, 3)
    engine = create_index_engine(settings)
    with engine.execution_options(**WRITE).begin() as conn:
        record(conn, "study.stable", study_instance_uid=study, payload={"version": 1})
    feed = IanFeed(settings, engine)
    try:
        assert feed.run_once() == 0  # the receiver is down: retried later
        assert feed.position() == 0
        received: list[Dataset] = []

        def on_create(event: Any) -> tuple[int, Dataset]:
            assert event.request.AffectedSOPClassUID == INSTANCE_AVAILABILITY_NOTIFICATION
            received.append(event.attribute_list)
            return 0x0000, event.attribute_list

        receiver = AE(ae_title="RIS1")
        receiver.add_supported_context(INSTANCE_AVAILABILITY_NOTIFICATION)
        server = receiver.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_CREATE, on_create)]
        )
        try:
            assert feed.run_once() == 1
        finally:
            server.shutdown()
        assert feed.run_once() == 0 and feed.position() > 0  # handled once
    finally:
        engine.dispose()
    [ian] = received
    assert ian.StudyInstanceUID == study
    [series] = ian.ReferencedSeriesSequence
    refs = series.ReferencedSOPSequence
    assert sorted(r.ReferencedSOPInstanceUID for r in refs) == sorted(uids)
    assert {(r.InstanceAvailability, r.RetrieveAETitle) for r in refs} == {("ONLINE", "PACS")}
    assert "ReferencedPerformedProcedureStepSequence" in ian

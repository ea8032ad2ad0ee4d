"""Study lifecycle: receiving -> stable after the quiet period, re-open as a new version,
jobs queued in the sweeper's transaction, exactly once per study version and analysis."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest
from pydicom.uid import UID, generate_uid
from sqlalchemy import Engine

from pacs.config import Settings, parse_ae_periods
from pacs.index.engine import create_index_engine
from pacs.ingest import IngestService, Source
from pacs.ingest.derived import ARCHIVE_MANUFACTURER
from pacs.jobs.analysis import ANALYSIS_CHANNEL
from pacs.jobs.lifecycle import orientation
from pacs.jobs.rules import parse_rules
from pacs.jobs.sweeper import study_state, sweep
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend
from tests.jobs_helpers import TEST_RULES, events, jobs_of, part10, store_study

RULES = parse_rules(TEST_RULES)


@pytest.fixture
def setup(db_backend: Backend) -> Iterator[tuple[Settings, IngestService, Engine]]:
    settings = db_backend.with_settings(
        stable_after_seconds=0.4, stable_after_seconds_by_ae="SLOWCT=30"
    )
    ingest = build_ingest(settings)
    engine = create_index_engine(settings)
    yield settings, ingest, engine
    engine.dispose()
    ingest.engine.dispose()


def test_quiet_period_then_stable_with_one_job(
    setup: tuple[Settings, IngestService, Engine],
) -> None:
    _, ingest, engine = setup
    study = store_study(ingest, slices=3, series=2)
    assert study_state(engine, study)["state"] == "receiving"  # type: ignore[index]
    assert sweep(engine, RULES, 3) == []  # quiet period not over
    kinds = [e.kind for e in events(engine, study=study)]
    assert kinds.count("instance.stored") == 6 and kinds.count("series.added") == 2
    time.sleep(0.5)
    done = sweep(engine, RULES, 3)
    assert [(d.study_instance_uid, d.version, len(d.job_ids)) for d in done] == [(study, 1, 1)]
    state = study_state(engine, study)
    assert state is not None and state["state"] == "stable" and state["version"] == 1
    (job,) = jobs_of(engine, study)
    assert (job.analysis, job.study_version, job.status, job.rule) == (
        "test",
        1,
        "queued",
        "any-ct",
    )
    assert len(job.series_instance_uids) == 2
    stable = events(engine, "study.stable", study)
    queued = events(engine, "job.queued", study)
    assert [e.payload for e in stable] == [{"version": 1}]
    assert queued[0].payload["job_id"] == job.pk and queued[0].seq > stable[0].seq
    assert sweep(engine, RULES, 3) == []  # nothing left to do


def test_late_instance_reopens_as_next_version_with_exactly_one_new_job(
    setup: tuple[Settings, IngestService, Engine],
) -> None:
    _, ingest, engine = setup
    study = store_study(ingest, slices=2)
    time.sleep(0.5)
    sweep(engine, RULES, 3)
    store_study(ingest, slices=1, study=study)  # a late series
    store_study(ingest, slices=1, study=study)  # and another one
    state = study_state(engine, study)
    assert state is not None and (state["state"], state["version"]) == ("receiving", 2)
    assert [e.payload for e in events(engine, "study.reopened", study)] == [{"version": 2}]
    time.sleep(0.5)
    sweep(engine, RULES, 3)
    sweep(engine, RULES, 3)
    jobs = jobs_of(engine, study)
    assert [(j.study_version, j.analysis) for j in jobs] == [(1, "test"), (2, "test")]
    assert len(jobs[1].series_instance_uids) == 3


def test_objects_stored_by_analyses_do_not_reopen(
    setup: tuple[Settings, IngestService, Engine],
) -> None:
    _, ingest, engine = setup
    study = store_study(ingest, slices=1)
    time.sleep(0.5)
    sweep(engine, RULES, 3)
    store_study(ingest, slices=1, study=study, source=Source(ANALYSIS_CHANNEL, derived=True))
    state = study_state(engine, study)
    assert state is not None and (state["state"], state["version"]) == ("stable", 1)
    assert len(events(engine, "series.added", study)) == 2  # still in the feed


def _sent(study: str, sop_class: str = "", manufacturer: str = "") -> bytes:
    """A CT slice of ``study``, made into another SOP Class or marked with a Manufacturer."""
    ds = ct_slice(study, generate_uid(), 0, size=8)
    if sop_class:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.Modality = "SR"
        for keyword in ("PixelData", "Rows", "Columns"):
            delattr(ds, keyword)
    if manufacturer:
        ds.Manufacturer = manufacturer
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_derived_objects_from_any_sender_never_reopen(
    setup: tuple[Settings, IngestService, Engine],
) -> None:
    """Only new source images open a study version: not an SR, KOS or PR from a modality,
    nor one of the archive's own objects sent back to it (creator marker)."""
    _, ingest, engine = setup
    study = store_study(ingest, slices=1)
    time.sleep(0.5)
    sweep(engine, RULES, 3)
    modality = Source(channel="dimse", ae_title="CT1")
    for data in (
        _sent(study, sop_class="1.2.840.10008.5.1.4.1.1.88.11"),  # Basic Text SR
        _sent(study, sop_class="1.2.840.10008.5.1.4.1.1.88.59"),  # Key Object Selection
        _sent(study, sop_class="1.2.840.10008.5.1.4.1.1.11.1"),  # Grayscale Softcopy PR
        _sent(study, manufacturer=ARCHIVE_MANUFACTURER),  # our own object, sent back
    ):
        assert ingest.store_part10(data, modality).status.ok
    state = study_state(engine, study)
    assert state is not None and (state["state"], state["version"]) == ("stable", 1)
    assert len(events(engine, "instance.stored", study)) == 5  # all stored and announced
    assert ingest.store_part10(_sent(study, manufacturer="Vendor CT"), modality).status.ok
    state = study_state(engine, study)
    assert state is not None and (state["state"], state["version"]) == ("receiving", 2)


def test_quiet_period_per_sending_ae(setup: tuple[Settings, IngestService, Engine]) -> None:
    _, ingest, engine = setup
    slow = store_study(ingest, source=Source(channel="dimse", ae_title="SLOWCT"))
    fast = store_study(ingest)
    time.sleep(0.5)
    assert [d.study_instance_uid for d in sweep(engine, RULES, 3)] == [fast]
    assert study_state(engine, slow)["state"] == "receiving"  # type: ignore[index]


def test_duplicates_do_not_touch_the_study(setup: tuple[Settings, IngestService, Engine]) -> None:
    _, ingest, engine = setup
    study = store_study(ingest, slices=1)
    time.sleep(0.5)
    sweep(engine, RULES, 3)
    data = part10(study, "1.2.3.4", 0)
    assert ingest.store_part10(data, Source(channel="dimse")).status.ok
    assert ingest.store_part10(data, Source(channel="dimse")).status == "duplicate"
    assert len(events(engine, "instance.stored", study)) == 2


def test_lifecycle_off_keeps_no_state_but_the_feed_announces_instances(
    db_backend: Backend,
) -> None:
    settings = db_backend.with_settings(study_lifecycle=False)
    ingest = build_ingest(settings)
    study = store_study(ingest, slices=2, series=2)
    engine = create_index_engine(settings)
    kinds = [e.kind for e in events(engine)]
    assert sorted(kinds) == ["instance.stored"] * 4 + ["series.added"] * 2
    assert kinds[0] == "series.added"  # a series is announced before its first instance
    assert {e.study_instance_uid for e in events(engine)} == {study}
    assert study_state(engine, study) is None
    engine.dispose()
    ingest.engine.dispose()


def test_orientation_and_ae_periods() -> None:
    assert orientation("1\\0\\0\\0\\1\\0", "") == "AXIAL"
    assert orientation("1\\0\\0\\0\\0\\-1", "") == "CORONAL"
    assert orientation("0\\1\\0\\0\\0\\-1", "") == "SAGITTAL"
    assert orientation("1\\0\\0\\0\\0.7071\\0.7071", "") == "OBLIQUE"
    assert orientation("", "ORIGINAL\\PRIMARY\\AXIAL") == "AXIAL"
    assert orientation("", "DERIVED") == ""
    assert parse_ae_periods(" CT1=60, MR=0.5 ") == {"CT1": 60.0, "MR": 0.5}
    for bad in ("CT1", "=5", "CT1=-1", "CT1=x", "CT1=nan"):
        with pytest.raises(ValueError, match="AE_TITLE=seconds"):
            parse_ae_periods(bad)

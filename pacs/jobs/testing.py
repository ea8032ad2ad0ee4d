"""Built-in analyses that exercise the whole job path without a model.

``test`` reads the study's instances, then stores one Basic Text SR into the study through
the ingest path, with UIDs and content derived from the study UID and version only: a re-run
(after a crash, a lease expiry or an operator retry) stores the identical object again, which
ingest answers as a duplicate, so the output exists once. ``noop`` does nothing (benchmarks).

Options (from the routing rule): ``sleep_seconds`` (work time, heartbeating), ``fail``
(raise, to test retries), ``log`` (a file that gets one line per run: job id, process id,
start and end time, for tests that check no job runs twice at once).
"""

from __future__ import annotations

import io
import os
import time
import uuid
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, BasicTextSRStorage, ExplicitVRLittleEndian
from sqlalchemy import select

from pacs.index.models import Instance, Series, Study
from pacs.jobs import JobError
from pacs.jobs.analysis import AnalysisContext, AnalysisResult

PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "SpecificCharacterSet",
)


def _work(ctx: AnalysisContext, options: dict[str, Any]) -> tuple[float, float]:
    started = time.time()
    deadline = time.monotonic() + float(options.get("sleep_seconds", 0))
    while time.monotonic() < deadline:
        ctx.heartbeat()
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if options.get("fail"):
        raise JobError(f"failing on purpose: {options['fail']}")
    ended = time.time()
    if options.get("log"):
        line = f"{ctx.job_id} {os.getpid()} {started:.6f} {ended:.6f}\n"
        fd = os.open(options["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    return started, ended


def analyse_noop(ctx: AnalysisContext) -> AnalysisResult:
    """Do nothing (besides the ``sleep_seconds`` / ``fail`` / ``log`` options)."""
    _work(ctx, ctx.options)
    return AnalysisResult([], {"analysis": "noop"})


def analyse_test(ctx: AnalysisContext) -> AnalysisResult:
    """Count the instances of the job's series and store the count as a Basic Text SR."""
    options = ctx.options
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(Series.series_instance_uid, Instance.sop_instance_uid, Instance.object_key)
            .join(Instance, Instance.series_pk == Series.pk)
            .join(Study, Study.pk == Series.study_pk)
            .where(
                Study.study_instance_uid == ctx.study_instance_uid,
                Series.series_instance_uid.in_(ctx.series_instance_uids),
            )
            .order_by(Instance.sop_instance_uid)
        ).fetchall()
    if not rows:
        raise JobError(f"no instances of the job's series in study {ctx.study_instance_uid}")
    _work(ctx, options)
    source = dcmread(io.BytesIO(ctx.store.get(rows[0].object_key)), stop_before_pixels=True)
    data = _report(ctx, source, len(rows))
    outcome = ctx.ingest.store_part10(data, ctx.source)
    if not outcome.status.ok:
        raise JobError(f"storing the report failed: {outcome.status} ({outcome.reason})")
    return AnalysisResult(
        [outcome.sop_instance_uid],
        {"instances": len(rows), "series": len(ctx.series_instance_uids), "stored": outcome.status},
    )


def _report(ctx: AnalysisContext, source: Dataset, instances: int) -> bytes:
    """The Basic Text SR of a study version: every UID and value derived from it alone."""
    seed = f"{ctx.study_instance_uid}|{ctx.study_version}|{ctx.analysis}"
    sop_uid = _name_uid(seed + "|sop")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    ds.StudyInstanceUID = ctx.study_instance_uid
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = _name_uid(seed + "|series")
    ds.Modality = "SR"
    ds.SeriesNumber = 9000 + ctx.study_version
    ds.SeriesDescription = "Test analysis"
    ds.InstanceNumber = 1
    ds.Manufacturer = "pacs"
    ds.ContentDate = source.get("StudyDate", "")
    ds.ContentTime = source.get("StudyTime", "")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("121111", "DCM", "Summary")])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
    item.TextValue = (
        f"Test analysis of study version {ctx.study_version}: {instances} instance(s) in "
        f"{len(ctx.series_instance_uids)} series."
    )
    ds.ContentSequence = Sequence([item])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _name_uid(name: str) -> UID:
    """A 2.25 UID from a name-based (v5) UUID: the same name, the same UID."""
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code

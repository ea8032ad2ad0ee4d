"""WADO-RS (PS3.18 10.4) at ``/dicomweb``: instances, metadata, frames, bulk data, rendered.

Instances stream the stored Part-10 bytes untouched (``transfer-syntax=*`` or the stored
syntax; decoded to Explicit/Implicit VR Little Endian on request). Metadata comes from the
per-instance documents in the index (one query per request, ETag + If-None-Match), frames
from byte ranges of the stored object found through the frame index. Every request is
recorded in the audit trail, refused ones with their status.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Annotated, NoReturn, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.uid import UID
from sqlalchemy import ColumnElement, Engine

from pacs.audit.lookup import patient_of_study
from pacs.config import Settings
from pacs.errors import StorageError
from pacs.metadata.dicom_json import dumps, element
from pacs.metadata.document import BASE_PLACEHOLDER, PIXEL_DATA, tag_path, value_at
from pacs.metadata.records import MetadataRow, content_tag
from pacs.metadata.selection import (
    BadPath,
    NotFound,
    Selection,
    select_instances,
    with_documents,
)
from pacs.security.imaging import imaging_scope
from pacs.storage.base import ObjectStore
from viewer_api.audit import AuditTrail
from viewer_api.deps import AuditDep, EngineDep, SettingsDep, StoreDep, SubjectDep
from viewer_api.dicomweb_paths import (
    Target,
    dicomweb_base,
    one_instance,
    one_series,
    one_study,
)
from viewer_api.negotiation import accepts
from viewer_api.wado import media, parts
from viewer_api.wado.pixels import (
    decodable,
    decoded_frame,
    frame_array,
    frame_from_object,
    stored_frame,
    transcode_part10,
)
from viewer_api.wado.render import (
    THUMBNAIL_SIZE,
    RenderError,
    RenderParams,
    Viewport,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

T = TypeVar("T")

CACHE_CONTROL = "private, no-cache"  # patient data: revalidate with the ETag every time


@dataclass
class Call:
    """One WADO-RS request: where the data is, and its audit record."""

    request: Request
    engine: Engine
    store: ObjectStore
    settings: Settings
    audit: AuditTrail
    scope: ColumnElement[bool] | None  # the caller's reach: pacs.security.imaging

    def record(self, status: int = 200) -> None:
        """Record the read of this request's study with ``status``."""
        self.audit("read", status, patient=self.patient, study=self.study)

    def streamed(self, body: Iterator[T]) -> Iterator[T]:
        """``body``, recorded with its real outcome once it has been sent (or failed)."""
        return self.audit.streamed("read", body, patient=self.patient, study=self.study)

    @property
    def study(self) -> str:
        return str(self.request.path_params.get("study", ""))

    @functools.cached_property
    def patient(self) -> str:
        """The PatientID of the requested study, for the audit record."""
        return patient_of_study(self.engine, self.study)

    def fail(self, status: int, detail: str) -> NoReturn:
        self.record(status)
        raise HTTPException(status, detail)

    def select(self, target: Target, *, documents: bool = True) -> Selection:
        assert target.study is not None  # every WADO-RS path names a study
        try:
            return select_instances(
                self.engine,
                target.study,
                target.series,
                target.instance,
                documents=documents,
                scope=self.scope,
            )
        except BadPath as exc:
            self.fail(400, str(exc))
        except NotFound as exc:
            self.fail(404, f"{exc} not found")

    def documents(self, selection: Selection) -> Selection:
        return with_documents(self.engine, self.store, selection)

    def accept(self) -> str:
        return self.request.headers.get("accept", "")

    def read(self, key: str) -> bytes:
        try:
            return self.store.get(key)
        except (KeyError, StorageError) as exc:
            log.error("stored object unreadable: %s", type(exc).__name__)
            self.fail(503, "a stored object cannot be read")

    @property
    def base(self) -> str:
        """The DICOMweb base URL for BulkDataURIs (absolute, as clients need them)."""
        return dicomweb_base(self.request, self.settings.public_base_url)


def _call(
    request: Request,
    engine: EngineDep,
    store: StoreDep,
    settings: SettingsDep,
    audit: AuditDep,
    subject: SubjectDep,
) -> Call:
    scope = imaging_scope(subject)
    return Call(request, engine, store, settings, audit, None if scope is None else scope.series())


CallDep = Annotated[Call, Depends(_call)]


def _register(
    shapes: tuple[tuple[str, Callable[..., Target], str, str], ...],
    handler: Callable[[Call, Target], Response],
) -> None:
    """One route per (path, path dependency, name, description), all served by ``handler``."""
    for path, scope, name, description in shapes:

        def endpoint(call: CallDep, target: Target = Depends(scope)) -> Response:
            return handler(call, target)

        router.add_api_route(path, endpoint, methods=["GET"], name=name, description=description)


# ---------------------------------------------------------------- instances


def _retrieve(call: Call, target: Target) -> StreamingResponse:
    """All instances the path names, ``multipart/related; type="application/dicom"``."""
    try:
        wanted, explicit = media.instance_syntax(call.accept())
    except media.NotAcceptable as exc:
        call.fail(406, str(exc))
    rows = call.select(target, documents=False).rows
    plan: list[tuple[MetadataRow, str]] = []
    for row in rows:
        stored = row.transfer_syntax_uid
        try:
            media.check_syntax(wanted, stored, decodable(stored))
            plan.append((row, stored if wanted in (media.AS_STORED, stored) else wanted))
        except media.NotAcceptable as exc:
            if explicit:
                call.fail(406, str(exc))
            plan.append((row, stored))  # default syntax impossible: as stored (PS3.18 8.7.3.5.2)
    boundary = parts.new_boundary()
    store = call.store
    return StreamingResponse(
        call.streamed(parts.body(boundary, _instances(store, plan))),
        media_type=parts.content_type(boundary, media.DICOM),
    )


def _instances(
    store: ObjectStore, plan: list[tuple[MetadataRow, str]]
) -> Iterator[tuple[str, str, bytes]]:
    for row, syntax in plan:
        data = store.get(row.object_key)
        if syntax != row.transfer_syntax_uid:
            data = transcode_part10(data, syntax)
        yield media.DICOM, syntax, data


_register(
    (
        ("/studies/{study}", one_study, "retrieve_study", "All instances of a study."),
        (
            "/studies/{study}/series/{series}",
            one_series,
            "retrieve_series",
            "All instances of a series.",
        ),
        (
            "/studies/{study}/series/{series}/instances/{instance}",
            one_instance,
            "retrieve_instance",
            "One instance.",
        ),
    ),
    _retrieve,
)

# ---------------------------------------------------------------- metadata


def _metadata(call: Call, target: Target) -> Response:
    """DICOM JSON of every instance the path names (bulk data as BulkDataURI)."""
    try:
        media.metadata_type(call.accept())
    except media.NotAcceptable as exc:
        call.fail(406, str(exc))
    selection = call.select(target)
    etag = f'"{content_tag(selection.rows)}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _matches(call.request.headers.get("if-none-match", ""), etag):
        call.record(304)
        return Response(status_code=304, headers=headers)
    selection = call.documents(selection)
    documents = [row.json() if row.document else _minimal(row, selection) for row in selection.rows]
    body = b"[" + b",".join(documents) + b"]"
    body = body.replace(BASE_PLACEHOLDER.encode(), call.base.encode())
    call.record()
    return Response(body, media_type=media.DICOM_JSON, headers=headers)


_register(
    (
        (
            "/studies/{study}/metadata",
            one_study,
            "study_metadata",
            "DICOM JSON of every instance of a study (bulk data as BulkDataURI).",
        ),
        (
            "/studies/{study}/series/{series}/metadata",
            one_series,
            "series_metadata",
            "DICOM JSON of every instance of a series.",
        ),
        (
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            one_instance,
            "instance_metadata",
            "DICOM JSON of one instance.",
        ),
    ),
    _metadata,
)


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _minimal(row: MetadataRow, selection: Selection) -> bytes:
    """The index's attributes of an instance whose object cannot be parsed."""
    study, series = selection.series[row.series_pk]
    uids = {
        "00080018": row.sop_instance_uid,
        "0020000D": study,
        "0020000E": series,
        "00083002": row.transfer_syntax_uid,
    }
    return dumps({tag: element("UI", [uid]) for tag, uid in uids.items()})


# ---------------------------------------------------------------- frames and bulk data


def _instance_row(call: Call, target: Target) -> MetadataRow:
    return call.documents(call.select(target)).rows[0]


def _frame_count(call: Call, row: MetadataRow) -> int:
    if row.document is None:
        call.fail(503, "the instance's metadata is not available")
    document = json.loads(row.json())
    if f"{PIXEL_DATA:08X}" not in document:
        call.fail(404, "the instance has no pixel data")
    value = document.get("00280008", {}).get("Value", [1])
    return int(value[0]) if value else 1


def _frame_numbers(call: Call, text: str) -> list[int]:
    numbers = []
    for item in text.split(","):
        if not item.strip().isdigit() or int(item) < 1:
            call.fail(400, "frame numbers are positive integers, separated by commas")
        numbers.append(int(item))
    return numbers


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
)
def retrieve_frames(
    frames: Annotated[str, Path(description="1-based frame numbers, comma separated")],
    call: CallDep,
    target: Target = Depends(one_instance),
) -> StreamingResponse:
    """Pixel data of frames: as stored (ranged reads through the frame index) or decoded."""
    numbers = _frame_numbers(call, frames)
    row = _instance_row(call, target)
    count = _frame_count(call, row)
    if max(numbers) > count:
        call.fail(400, f"the instance has {count} frame(s)")
    return _frames_response(call, row, numbers)


def _frames_response(call: Call, row: MetadataRow, numbers: list[int]) -> StreamingResponse:
    """Frames ``numbers`` of ``row`` in the transfer syntax the Accept header chooses."""
    stored = row.transfer_syntax_uid
    try:
        choice = media.frame_choice(call.accept(), stored, decodable(stored))
    except media.NotAcceptable as exc:
        call.fail(406, str(exc))
    boundary = parts.new_boundary()
    return StreamingResponse(
        call.streamed(parts.body(boundary, _frames(call.store, row, numbers, choice))),
        media_type=parts.content_type(boundary, choice.media_type),
    )


def _frames(
    store: ObjectStore, row: MetadataRow, numbers: list[int], choice: media.FrameChoice
) -> Iterator[tuple[str, str, bytes]]:
    index = row.frames()
    stored = row.transfer_syntax_uid
    # native little-endian pixel data is the same bytes in either VR encoding
    as_stored = choice.transfer_syntax == stored or {choice.transfer_syntax, stored} <= set(
        media.NATIVE
    )
    data: bytes | None = None
    for number in numbers:
        if as_stored and index is not None:
            content = stored_frame(store, row.object_key, index, number)
        else:
            data = data if data is not None else store.get(row.object_key)
            content = frame_from_object(data, number) if as_stored else decoded_frame(data, number)
        yield choice.media_type, choice.transfer_syntax, content


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulk/{path:path}",
)
def retrieve_bulkdata(
    path: str, call: CallDep, target: Target = Depends(one_instance)
) -> StreamingResponse:
    """A bulk data value named by a BulkDataURI of the metadata (tag path)."""
    try:
        tags = tag_path(path)
    except ValueError as exc:
        call.fail(400, str(exc))
    row = _instance_row(call, target)
    if tags == [PIXEL_DATA] and UID(row.transfer_syntax_uid).is_compressed:
        return _frames_response(call, row, list(range(1, _frame_count(call, row) + 1)))
    if not accepts(call.accept(), media.OCTET_STREAM, in_multipart=True):
        call.fail(406, "bulk data is available as application/octet-stream")
    ds = dcmread(BytesIO(call.read(row.object_key)))
    try:
        value = value_at(ds, tags).value
    except (KeyError, IndexError, ValueError):
        call.fail(404, "no such bulk data element")
    if not isinstance(value, bytes | bytearray):
        call.fail(404, "the element is not bulk data")
    call.record()
    boundary = parts.new_boundary()
    content = iter([(media.OCTET_STREAM, "", bytes(value))])
    return StreamingResponse(
        parts.body(boundary, content), media_type=parts.content_type(boundary, media.OCTET_STREAM)
    )


# ---------------------------------------------------------------- rendered and thumbnails


def _render_params(
    call: Call, window: str | None, viewport: str | None, quality: str | None, thumbnail: bool
) -> RenderParams:
    try:
        media_type = media.rendered_type(call.accept())
    except media.NotAcceptable as exc:
        call.fail(406, str(exc))
    try:
        port = parse_viewport(viewport)
        if port is None and thumbnail:
            port = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        return RenderParams(media_type, parse_quality(quality), parse_window(window), port)
    except RenderError as exc:
        call.fail(400, str(exc))


def _rendered(call: Call, row: MetadataRow, number: int, params: RenderParams) -> Response:
    count = _frame_count(call, row)
    if number > count:
        call.fail(400, f"the instance has {count} frame(s)")
    data = call.read(row.object_key)
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
        image = render(ds, frame_array(data, number), params)
    except RenderError as exc:  # parameters that do not fit this image
        call.fail(400, str(exc))
    except Exception as exc:
        log.warning("cannot render an instance: %s", type(exc).__name__)
        call.fail(406, f"the pixel data cannot be rendered ({type(exc).__name__})")
    call.record()
    return Response(image, media_type=params.media_type, headers={"Cache-Control": CACHE_CONTROL})


Window = Annotated[str | None, Query(description="center,width[,LINEAR|LINEAR_EXACT|SIGMOID]")]
ViewportQ = Annotated[str | None, Query(description="vw,vh[,sx,sy,sw,sh]")]
Quality = Annotated[str | None, Query(description="JPEG quality 1..100")]


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
def instance_rendered(
    call: CallDep,
    target: Target = Depends(one_instance),
    window: Window = None,
    viewport: ViewportQ = None,
    quality: Quality = None,
) -> Response:
    """The (first) frame of an instance as PNG or JPEG."""
    params = _render_params(call, window, viewport, quality, thumbnail=False)
    return _rendered(call, _instance_row(call, target), 1, params)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
def frame_rendered(
    frame: str,
    call: CallDep,
    target: Target = Depends(one_instance),
    window: Window = None,
    viewport: ViewportQ = None,
    quality: Quality = None,
) -> Response:
    """One frame as PNG or JPEG."""
    (number,) = _single_frame(call, frame)
    params = _render_params(call, window, viewport, quality, thumbnail=False)
    return _rendered(call, _instance_row(call, target), number, params)


def _single_frame(call: Call, text: str) -> list[int]:
    numbers = _frame_numbers(call, text)
    if len(numbers) != 1:
        call.fail(400, "render one frame at a time")
    return numbers


def _thumbnail_endpoint(scope: Callable[..., Target]) -> Callable[..., Response]:
    """A small rendering (128 x 128 unless ``viewport`` says otherwise) of the instance the
    path names, or of the middle instance of the (first) series."""

    def thumbnail(
        call: CallDep, target: Target = Depends(scope), viewport: ViewportQ = None
    ) -> Response:
        params = _render_params(call, None, viewport, None, thumbnail=True)
        return _rendered(call, _middle(call, target), 1, params)

    return thumbnail


for _path, _scope, _name, _description in (
    (
        "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
        one_instance,
        "instance_thumbnail",
        "A small rendering of an instance (128 x 128 unless ``viewport`` says otherwise).",
    ),
    (
        "/studies/{study}/series/{series}/thumbnail",
        one_series,
        "series_thumbnail",
        "A small rendering of the middle instance of a series.",
    ),
    (
        "/studies/{study}/thumbnail",
        one_study,
        "study_thumbnail",
        "A small rendering of the middle instance of the study's first series.",
    ),
):
    router.add_api_route(
        _path, _thumbnail_endpoint(_scope), methods=["GET"], name=_name, description=_description
    )


def _middle(call: Call, target: Target) -> MetadataRow:
    """The middle instance of the first series the path names (the instance, if it names one)."""
    selection = call.documents(call.select(target))
    first = selection.rows[0].series_pk
    rows = [row for row in selection.rows if row.series_pk == first]
    return rows[len(rows) // 2]

"""QIDO-RS at ``/dicomweb`` (PS3.18 10.6): search for studies, series and instances.

The same matching as C-FIND (``pacs.query``). Answers ``application/dicom+json``: 200 with the
matches (an empty array when nothing matches, PS3.18 as amended by CP-2473), 400 for a query the
archive cannot parse, 404 when the study or series of the path is not stored, 406 when Accept
excludes DICOM JSON. ``Warning: 299`` headers report clamped limits, remaining results and
ignored matching keys. Every request is audited as ``search``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from pacs.config import Settings
from pacs.query import QueryError, QueryModel
from pacs.query.catalog import missing_level
from pacs.query.find import Match, find_values
from pacs.query.matching import MatchOptions
from pacs.security.imaging import ImagingScope, imaging_scope
from viewer_api.deps import AuditDep, SessionDep, SettingsDep, SubjectDep
from viewer_api.dicomweb_paths import Target, dicomweb_base, everything, one_series, one_study
from viewer_api.negotiation import DICOM_JSON, accepts
from viewer_api.qido import QidoError, QidoQuery, parse, to_json

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

_WARN_AGENT = "299 pacs"

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Matches (possibly none)", "content": {DICOM_JSON: {}}},
    400: {"description": "Unknown attribute, malformed value, bad limit/offset"},
    404: {"description": "The study or series of the path is not stored"},
    406: {"description": "Accept does not allow application/dicom+json"},
}
_PARAMETERS = {
    "parameters": [
        {
            "name": "{attributeID}",
            "in": "query",
            "required": False,
            "description": "Matching key: keyword or tag, e.g. PatientName=smith* or "
            "00100020=ID1; UID lists with ',' or '\\'; date ranges 20240101-20241231",
            "schema": {"type": "string"},
        },
        {"name": "includefield", "in": "query", "schema": {"type": "string"}},
        {"name": "fuzzymatching", "in": "query", "schema": {"type": "boolean"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    ]
}


SearchScope = Callable[..., Target]

_SEARCHES: tuple[tuple[str, str, SearchScope, str, str], ...] = (
    ("/studies", "STUDY", everything, "search_studies", "Search for studies."),
    ("/series", "SERIES", everything, "search_series", "Search for series of any study."),
    (
        "/studies/{study}/series",
        "SERIES",
        one_study,
        "search_study_series",
        "Search for series of one study.",
    ),
    ("/instances", "IMAGE", everything, "search_instances", "Search for instances of any study."),
    (
        "/studies/{study}/instances",
        "IMAGE",
        one_study,
        "search_study_instances",
        "Search for instances of one study.",
    ),
    (
        "/studies/{study}/series/{series}/instances",
        "IMAGE",
        one_series,
        "search_series_instances",
        "Search for instances of one series.",
    ),
)
"""The six QIDO-RS resources: path, query level, path dependency, name, description."""


def _endpoint(level: str, scope: SearchScope) -> Callable[..., Response]:
    """The endpoint searching at ``level`` within the path's study / series."""

    def search(
        request: Request,
        session: SessionDep,
        audit: AuditDep,
        settings: SettingsDep,
        subject: SubjectDep,
        target: Target = Depends(scope),
    ) -> Response:
        try:
            reach = imaging_scope(subject, session)
            response = _answer(request, session, settings, level, target.keys(), reach)
        except QidoError as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status)
        except QueryError as exc:
            response = JSONResponse({"detail": str(exc)}, status_code=400)
        except SQLAlchemyError:
            log.exception("QIDO-RS failed in the index")
            response = JSONResponse({"detail": "index unavailable"}, status_code=503)
        # end the read transaction first: on SQLite, upgrading a read snapshot to a write
        # fails at once ("database is locked") when another process committed in between
        session.rollback()
        params = request.query_params
        patient = params.get("PatientID") or params.get("00100020") or ""
        study = request.path_params.get("study") or params.get("StudyInstanceUID") or ""
        audit("search", response.status_code, patient=patient, study=study)
        return response

    return search


for _path, _level, _scope, _name, _description in _SEARCHES:
    router.add_api_route(
        _path,
        _endpoint(_level, _scope),
        methods=["GET"],
        name=_name,
        description=_description,
        responses=_RESPONSES,
        openapi_extra=_PARAMETERS,
    )


def _answer(
    request: Request,
    session: Session,
    settings: Settings,
    level: str,
    scope: dict[str, str],
    reach: ImagingScope | None,
) -> Response:
    if not accepts(request.headers.get("accept", ""), DICOM_JSON, "application/json"):
        raise QidoError(406, f"QIDO-RS answers {DICOM_JSON}; Accept does not allow it")
    query = parse(
        request.query_params.multi_items(), level, scope=scope, max_limit=settings.qido_max_limit
    )
    _check_scope(session, scope, reach)
    options = MatchOptions(pn_matching=settings.pn_component_matching, fuzzy=query.fuzzy)
    matches = list(_run(session, query, options, reach))
    if query.limit is not None and len(matches) > query.limit:
        matches = matches[: query.limit]
        query.warnings.append(
            "There are additional results that can be requested with offset="
            f"{query.offset + query.limit}"
        )
    base = dicomweb_base(request, settings.public_base_url)
    body = [to_json(match, level, base) for match in matches]
    headers = {"Warning": ", ".join(f'{_WARN_AGENT} "{w}"' for w in query.warnings)}
    log.info("QIDO-RS %s: %d matches", level, len(body))
    return JSONResponse(body, media_type=DICOM_JSON, headers=headers if query.warnings else None)


def _run(
    session: Session, query: QidoQuery, options: MatchOptions, reach: ImagingScope | None
) -> Iterator[Match]:
    limit = None if query.limit is None else query.limit + 1  # one more: are there others?
    return find_values(
        session,
        query.identifier,
        QueryModel.STUDY_ROOT,
        options=options,
        hierarchical=False,
        limit=limit,
        offset=query.offset,
        scope=reach,
    )


def _check_scope(session: Session, scope: dict[str, str], reach: ImagingScope | None) -> None:
    """404 when the study (or the series within it) of the path is not stored (or not
    within the caller's reach)."""
    missing = missing_level(
        session, scope.get("StudyInstanceUID"), scope.get("SeriesInstanceUID"), reach
    )
    if missing == "study":
        raise QidoError(404, "no such study")
    if missing == "series":
        raise QidoError(404, "no such series in this study")

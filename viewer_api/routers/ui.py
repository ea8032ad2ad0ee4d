"""``/``: a minimal web page listing the stored studies (the review UI comes later)."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from viewer_api.audit import record_access
from viewer_api.deps import CurrentUser, SessionDep, SettingsDep
from viewer_api.routers.studies import recent_studies

router = APIRouter(tags=["ui"])

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Imaging archive</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>Imaging archive</h1>
<p>DICOM: AE title <b>{ae}</b>, port <b>{port}</b>. {total} studies stored.
API: <a href="/docs">/docs</a>, <a href="/api/studies">/api/studies</a>,
<a href="/health">/health</a>, <a href="/metrics">/metrics</a>.</p>
<table><thead><tr><th>Patient</th><th>Patient ID</th><th>Study date</th><th>Accession</th>
<th>Description</th><th>Modalities</th><th>Series</th><th>Instances</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(
    request: Request, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> HTMLResponse:
    """The 100 most recently updated studies."""
    total, rows = recent_studies(session, limit=100)
    record_access(session, request, user, "search")
    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(str(value))}</td>"
            for value in (
                patient.patient_name,
                patient.patient_id,
                study.study_date,
                study.accession_number,
                study.study_description,
                study.modalities_in_study.replace("\\", ", "),
                study.number_of_study_related_series,
                study.number_of_study_related_instances,
            )
        )
        + "</tr>"
        for study, patient in rows
    )
    return HTMLResponse(
        _PAGE.format(
            ae=escape(settings.ae_title), port=settings.dicom_port, total=total, rows=cells
        )
    )

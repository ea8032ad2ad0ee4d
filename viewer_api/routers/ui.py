"""``/``: a minimal web page listing the stored studies (the review UI comes later)."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from pacs.query.catalog import recent_studies
from pacs.security.imaging import imaging_scope
from viewer_api.deps import AuditDep, SessionDep, SettingsDep, SubjectDep

router = APIRouter(tags=["ui"])

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Imaging archive</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>Imaging archive</h1>
<p>DICOM: AE title <b>{ae}</b>, port <b>{port}</b>. {total} studies stored.
API: <a href="/docs">/docs</a>, <a href="/api/studies">/api/studies</a>,
<a href="/health">/health</a>, <a href="/metrics">/metrics</a>.</p>
<form method="post" action="/logout"><button type="submit">Log out</button></form>
<table><thead><tr><th>Patient</th><th>Patient ID</th><th>Study date</th><th>Accession</th>
<th>Description</th><th>Modalities</th><th>Series</th><th>Instances</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(
    session: SessionDep, audit: AuditDep, settings: SettingsDep, subject: SubjectDep
) -> HTMLResponse:
    """The 100 most recently updated studies the caller reaches."""
    page = recent_studies(session, limit=100, scope=imaging_scope(subject))
    audit("search")
    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(str(value))}</td>"
            for value in (
                study.patient_name,
                study.patient_id,
                study.study_date,
                study.accession_number,
                study.study_description,
                ", ".join(study.modalities_in_study),
                study.number_of_series,
                study.number_of_instances,
            )
        )
        + "</tr>"
        for study in page.rows
    )
    return HTMLResponse(
        _PAGE.format(
            ae=escape(settings.ae_title), port=settings.dicom_port, total=page.total, rows=cells
        )
    )

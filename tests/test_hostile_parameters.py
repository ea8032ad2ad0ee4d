"""Every path and query parameter of every route, given hostile values (NaN, infinities,
numbers past 64 bits, negative offsets, empty and malformed UIDs, traversal, control
characters): the answer is never a 5xx. The routes come from the app's own route table, so a
new route is covered without a line here."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from pacs.ingest import Source
from pacs.security.subject import LOCAL_ADMIN
from testkit.dicom_factory import ct_slice
from tests.conftest import Backend
from tests.dimse_tools import part10_bytes
from viewer_api.app import PROTECTED_ROUTERS, PUBLIC_ROUTERS, create_app
from viewer_api.deps import get_current_user

HOSTILE = (
    "nan",
    "-inf",
    "1e309",
    "-1",
    "0",
    "99999999999999999999",
    "1" + "0" * 30,
    "",
    "1.2..3",
    "1.2.3.",
    "x" * 300,
    "../../etc/passwd",
    "\x00",
    "😀",
    "1,,2",
    "0x10",
)
"""Values every parameter is given, one parameter at a time."""
COMPOSITE = {
    "viewport": ("nan,nan", "1e309,64", "64,64,0,0,1e9,1e9", "64,64,nan,0,8,8", "64,64,-1e9,0,8,8"),
    "window": ("nan,nan", "40,inf", "1e309,400", "40,-1"),
    "quality": ("nan", "101"),
}
"""Values of parameters that hold several numbers, given to them besides ``HOSTILE``."""

BENIGN_PATH = {
    "resource_type": "Patient",
    "name": "swagger-ui.css",
    "path": "00280010",
    "title": "WORKSTATION",
    "frame": "1",
    "frames": "1",
    "version_id": "1",
}
"""Valid values for the other path parameters (ids: "1"; the fixture adds the UIDs of a stored
instance and the id of a stored Patient, so hostile query values reach the code that reads
them instead of a 404)."""

UNDECLARED_QUERY = {
    "/dicomweb/": ("limit", "offset", "includefield", "StudyDate", "PatientID", "fuzzymatching"),
    "/fhir/": ("_count", "_offset", "_id", "_sort", "_include", "_revinclude", "birthdate"),
}
"""Query parameters routes read from the request themselves (QIDO-RS, FHIR search)."""


def _path_params(route: APIRoute) -> set[str]:
    found, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        found |= {p.name for p in dependant.path_params}
        stack += dependant.dependencies
    return found


def _query_params(route: APIRoute) -> set[str]:
    found, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        found |= {p.alias for p in dependant.query_params}
        stack += dependant.dependencies
    for prefix, names in UNDECLARED_QUERY.items():
        if route.path.startswith(prefix) and "GET" in route.methods:
            found |= set(names)
    return found


def _cases() -> Iterator[tuple[str, str, str, str]]:
    """(method, route path, parameter, "path"|"query") of every parameter of every route."""
    for router in PUBLIC_ROUTERS + PROTECTED_ROUTERS:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in sorted(route.methods):
                for name in sorted(_path_params(route)):
                    yield method, route.path, name, "path"
                for name in sorted(_query_params(route)):
                    yield method, route.path, name, "query"


def _url(
    path: str, params: set[str], hostile: str | None, target: str, benign: dict[str, str]
) -> str:
    for name in params:
        value = hostile if name == target and hostile is not None else None
        filled = value if value is not None else benign.get(name, "1")
        path = path.replace(f"{{{name}:path}}", quote(filled, safe=""))
        path = path.replace(f"{{{name}}}", quote(filled, safe=""))
    return path


@pytest.fixture
def client(db_backend: Backend) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The app with one stored CT instance and one Patient; the benign path values."""
    app = create_app(db_backend.with_settings(emr_feed=False, storage_fsync="never"))
    app.dependency_overrides[get_current_user] = lambda: LOCAL_ADMIN
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    outcome = app.state.ingest.store_part10(part10_bytes(ds), Source(channel="test"))
    assert outcome.status.ok
    patient = app.state.fhir_store.create({"resourceType": "Patient", "active": True})
    benign = {
        **BENIGN_PATH,
        "study": str(ds.StudyInstanceUID),
        "series": str(ds.SeriesInstanceUID),
        "instance": str(ds.SOPInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "resource_id": patient["id"],
        "patient_id": patient["id"],
    }
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client, benign


def test_the_route_table_is_covered() -> None:
    cases = list(_cases())
    assert len({path for _, path, _, _ in cases}) > 30
    assert ("GET", "/api/jobs/{job_id}", "job_id", "path") in cases


def test_no_hostile_parameter_gets_a_server_error(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    api, benign = client
    failures = []
    for method, route_path, name, kind in _cases():
        params = _path_params_of(route_path)
        for hostile in HOSTILE + COMPOSITE.get(name, ()):
            if kind == "path":
                if not hostile:
                    continue  # an empty segment is another URL (404 from the router)
                url, query = _url(route_path, params, hostile, name, benign), {}
            else:
                url, query = _url(route_path, params, None, name, benign), {name: hostile}
            body = {} if method in ("POST", "PUT") else None
            response = api.request(method, url, params=query, json=body)
            if response.status_code >= 500:
                failures.append(
                    f"{method} {url} {query}: {response.status_code} {response.text[:120]}"
                )
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:40])


def _path_params_of(path: str) -> set[str]:
    return {part.strip("{}").split(":")[0] for part in path.split("/") if part.startswith("{")}


def test_the_reported_cases_are_400_with_a_reason(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    api, benign = client
    rendered = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered".format(
        **benign
    )
    cases = {
        "/api/jobs/99999999999999999999": {},
        "/api/webhooks/1" + "0" * 30: {},
        "/api/jobs": {"limit": str(10**30)},
        rendered: {"viewport": "nan,nan"},
    }
    for path, query in cases.items():
        response = api.get(path, params=query)
        # 422: FastAPI's validation of a declared parameter, with the reason
        assert response.status_code in (400, 422), (path, response.status_code, response.text)
        assert response.json()["detail"], path
    assert api.get("/api/studies", params={"offset": "-1"}).status_code in (400, 422)
    assert api.get(rendered, params={"viewport": "64,64,0,0,1e9,1e9"}).status_code == 200

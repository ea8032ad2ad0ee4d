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

from pacs.security.subject import LOCAL_ADMIN
from tests.conftest import Backend
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

BENIGN_PATH = {
    "resource_type": "Patient",
    "name": "swagger-ui.css",
    "path": "00280010",
    "title": "WORKSTATION",
}
"""Valid-looking values for the other path parameters (default: a UID)."""

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


def _url(path: str, params: set[str], hostile: str | None, target: str) -> str:
    for name in params:
        value = hostile if name == target and hostile is not None else None
        filled = value if value is not None else BENIGN_PATH.get(name, "1.2.3")
        path = path.replace(f"{{{name}:path}}", quote(filled, safe=""))
        path = path.replace(f"{{{name}}}", quote(filled, safe=""))
    return path


@pytest.fixture
def client(db_backend: Backend) -> Iterator[TestClient]:
    app = create_app(db_backend.with_settings(emr_feed=False))
    app.dependency_overrides[get_current_user] = lambda: LOCAL_ADMIN
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_route_table_is_covered() -> None:
    cases = list(_cases())
    assert len({path for _, path, _, _ in cases}) > 30
    assert ("GET", "/api/jobs/{job_id}", "job_id", "path") in cases


def test_no_hostile_parameter_gets_a_server_error(client: TestClient) -> None:
    failures = []
    for method, route_path, name, kind in _cases():
        params = _path_params_of(route_path)
        for hostile in HOSTILE:
            if kind == "path":
                if not hostile:
                    continue  # an empty segment is another URL (404 from the router)
                url, query = _url(route_path, params, hostile, name), {}
            else:
                url, query = _url(route_path, params, None, name), {name: hostile}
            body = {} if method in ("POST", "PUT") else None
            response = client.request(method, url, params=query, json=body)
            if response.status_code >= 500:
                failures.append(
                    f"{method} {url} {query}: {response.status_code} {response.text[:120]}"
                )
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:40])


def _path_params_of(path: str) -> set[str]:
    return {part.strip("{}").split(":")[0] for part in path.split("/") if part.startswith("{")}

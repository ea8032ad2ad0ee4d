"""The shape of the HTTP layer: every route but the declared public ones authenticates through
``CurrentUser``, the ``/api`` routes answer declared response models, the folded DICOMweb
routes keep their paths and operation ids, and writes of the admin API are audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from pacs.audit.tables import AuditEvent
from pacs.index.engine import session_factory
from pacs.security.subject import Role, Subject, SubjectKind
from testkit.routes import api_routes, is_public
from tests.conftest import make_backend
from viewer_api.app import create_app
from viewer_api.deps import get_current_user


@pytest.fixture
def app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[FastAPI]:
    backend = make_backend(request, tmp_path, "sqlite", "file")
    application = create_app(backend.with_settings(webhook_allowed_networks="127.0.0.0/8"))
    yield application
    application.state.engine.dispose()


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def test_every_route_but_the_public_ones_goes_through_current_user(app: FastAPI) -> None:
    routes = [(c, cast(APIRoute, c.original_route)) for c in api_routes(app)]  # non-empty
    public = {route.path for context, route in routes if is_public(context)}
    protected = [(context, route) for context, route in routes if not is_public(context)]
    assert len(protected) > 50, "the protected routes were not found"
    unauthenticated = [
        f"{sorted(route.methods)} {route.path}"
        for context, route in protected
        if get_current_user not in set(_calls(context.dependant))
    ]
    assert unauthenticated == []
    assert {"/health", "/health/live", "/metrics", "/docs", "/fhir/metadata"} <= public
    assert "/fhir/{resource_type}" not in public


def test_api_routes_declare_response_models(app: FastAPI) -> None:
    schema = app.openapi()
    untyped = []
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if not status.startswith("2") or status == "204":
                    continue
                body = answer["content"]["application/json"]["schema"]
                model = body.get("items", body)
                if "$ref" not in model:
                    untyped.append(f"{method.upper()} {path} {status}")
    assert untyped == []


def test_folded_dicomweb_routes_keep_paths_and_operation_ids(app: FastAPI) -> None:
    operations = {
        (path, op["operationId"])
        for path, item in app.openapi()["paths"].items()
        for op in item.values()
        if path.startswith("/dicomweb/") and "get" in item
    }
    study, series = "/dicomweb/studies/{study}", "/dicomweb/studies/{study}/series/{series}"
    instance = f"{series}/instances/{{instance}}"
    expected = {
        ("/dicomweb/studies", "search_studies"),
        ("/dicomweb/series", "search_series"),
        ("/dicomweb/instances", "search_instances"),
        (f"{study}/series", "search_study_series"),
        (f"{study}/instances", "search_study_instances"),
        (f"{series}/instances", "search_series_instances"),
        (study, "retrieve_study"),
        (series, "retrieve_series"),
        (instance, "retrieve_instance"),
        (f"{study}/metadata", "study_metadata"),
        (f"{series}/metadata", "series_metadata"),
        (f"{instance}/metadata", "instance_metadata"),
        (f"{study}/thumbnail", "study_thumbnail"),
        (f"{series}/thumbnail", "series_thumbnail"),
        (f"{instance}/thumbnail", "instance_thumbnail"),
    }
    named = {(path, op_id.split("_dicomweb")[0]) for path, op_id in operations}
    assert expected <= named
    parameters = app.openapi()["paths"][instance]["get"]["parameters"]
    assert [p["name"] for p in parameters if p["in"] == "path"] == ["study", "series", "instance"]


def test_webhook_and_rules_writes_are_audited(app: FastAPI) -> None:
    with TestClient(app) as client:
        created = client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/hook"})
        assert created.status_code == 201, created.text
        hook = created.json()["id"]
        assert client.delete(f"/api/webhooks/{hook}").status_code == 204
        assert client.delete(f"/api/webhooks/{hook}").status_code == 404
        assert client.post("/api/rules/reload").status_code == 200
    with session_factory(app.state.engine)() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.pk)).all()
        trail = [(row.user_name, row.action, row.resource, row.outcome) for row in rows]
    assert trail == [
        ("local-admin", "create", "/api/webhooks", 201),
        ("local-admin", "delete", f"/api/webhooks/{hook}", 204),
        ("local-admin", "delete", f"/api/webhooks/{hook}", 404),
        ("local-admin", "update", "/api/rules/reload", 200),
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/quarantine"),
        ("POST", "/api/quarantine/1/release"),
        ("POST", "/api/quarantine/1/discard"),
    ],
)
def test_the_quarantine_is_for_administrators(app: FastAPI, method: str, path: str) -> None:
    """Held objects name patients: a non-administrator is refused before anything is read."""
    radiologist = Subject("dr", SubjectKind.USER, frozenset({Role.RADIOLOGIST}))
    app.dependency_overrides[get_current_user] = lambda: radiologist
    with TestClient(app) as client:
        assert client.request(method, path).status_code == 403
    admin = Subject("root", SubjectKind.USER, frozenset({Role.ADMIN}))
    app.dependency_overrides[get_current_user] = lambda: admin
    with TestClient(app) as client:
        assert client.get("/api/quarantine").status_code == 200

"""The access policy of every HTTP route: ``ROUTES`` maps each protected (method, path) to the
(action, resource) it performs, and ``authorize`` — a dependency of every protected router
(``viewer_api.app``) — asks :func:`pacs.security.policy.decide` before the endpoint runs.

A route missing from ``ROUTES`` is refused (403) and fails tests/test_authorization_matrix.py:
a new route needs its row here. Which rows a subject then sees is decided in the queries
(:mod:`pacs.security.imaging`, :mod:`pacs.security.fhir_scope`).
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute

from pacs.security.policy import Action, Decision, Resource, decide
from viewer_api.deps import AuditDep, SubjectDep

A, R = Action, Resource
_WADO = "/dicomweb/studies/{study}"
_INSTANCE = f"{_WADO}/series/{{series}}/instances/{{instance}}"

ROUTES: dict[tuple[str, str], tuple[Action, Resource]] = {
    ("GET", "/"): (A.SEARCH, R.IMAGING),
    ("GET", "/api/studies"): (A.SEARCH, R.IMAGING),
    ("GET", "/api/studies/{study_instance_uid}"): (A.READ, R.IMAGING),
    ("GET", "/api/aes"): (A.ADMIN, R.ADMINISTRATION),
    ("GET", "/api/aes/{title}"): (A.ADMIN, R.ADMINISTRATION),
    ("PUT", "/api/aes/{title}"): (A.ADMIN, R.ADMINISTRATION),
    ("DELETE", "/api/aes/{title}"): (A.ADMIN, R.ADMINISTRATION),
    ("POST", "/dicomweb/studies"): (A.WRITE, R.IMAGING),
    ("POST", "/dicomweb/studies/{study}"): (A.WRITE, R.IMAGING),
    ("GET", _WADO): (A.READ, R.IMAGING),
    ("GET", f"{_WADO}/series/{{series}}"): (A.READ, R.IMAGING),
    ("GET", _INSTANCE): (A.READ, R.IMAGING),
    ("GET", f"{_WADO}/metadata"): (A.READ, R.IMAGING),
    ("GET", f"{_WADO}/series/{{series}}/metadata"): (A.READ, R.IMAGING),
    ("GET", f"{_INSTANCE}/metadata"): (A.READ, R.IMAGING),
    ("GET", f"{_INSTANCE}/frames/{{frames}}"): (A.READ, R.IMAGING),
    ("GET", f"{_INSTANCE}/bulk/{{path:path}}"): (A.READ, R.IMAGING),
    ("GET", f"{_INSTANCE}/rendered"): (A.READ, R.IMAGING),
    ("GET", f"{_INSTANCE}/frames/{{frame}}/rendered"): (A.READ, R.IMAGING),
    ("GET", f"{_INSTANCE}/thumbnail"): (A.READ, R.IMAGING),
    ("GET", f"{_WADO}/series/{{series}}/thumbnail"): (A.READ, R.IMAGING),
    ("GET", f"{_WADO}/thumbnail"): (A.READ, R.IMAGING),
    ("GET", "/dicomweb/studies"): (A.SEARCH, R.IMAGING),
    ("GET", "/dicomweb/series"): (A.SEARCH, R.IMAGING),
    ("GET", f"{_WADO}/series"): (A.SEARCH, R.IMAGING),
    ("GET", "/dicomweb/instances"): (A.SEARCH, R.IMAGING),
    ("GET", f"{_WADO}/instances"): (A.SEARCH, R.IMAGING),
    ("GET", f"{_WADO}/series/{{series}}/instances"): (A.SEARCH, R.IMAGING),
    ("GET", "/fhir/AuditEvent"): (A.SEARCH, R.AUDIT),
    ("POST", "/fhir/AuditEvent/_search"): (A.SEARCH, R.AUDIT),
    ("GET", "/fhir/AuditEvent/{event_id}"): (A.READ, R.AUDIT),
    # the trail is append-only: writes answer 405 to those who may read all of it
    ("POST", "/fhir/AuditEvent"): (A.ADMIN, R.AUDIT),
    ("PUT", "/fhir/AuditEvent/{event_id}"): (A.ADMIN, R.AUDIT),
    ("DELETE", "/fhir/AuditEvent/{event_id}"): (A.ADMIN, R.AUDIT),
    # transaction / batch: entries of any type and action, so administrators and systems only
    ("POST", "/fhir/"): (A.ADMIN, R.FHIR),
    ("POST", "/fhir"): (A.ADMIN, R.FHIR),
    ("GET", "/fhir/{resource_type}"): (A.SEARCH, R.FHIR),
    ("POST", "/fhir/{resource_type}/_search"): (A.SEARCH, R.FHIR),
    ("POST", "/fhir/{resource_type}"): (A.WRITE, R.FHIR),
    ("PUT", "/fhir/{resource_type}"): (A.WRITE, R.FHIR),
    ("GET", "/fhir/Patient/{patient_id}/$everything"): (A.READ, R.FHIR),
    ("GET", "/fhir/{resource_type}/{resource_id}"): (A.READ, R.FHIR),
    ("PUT", "/fhir/{resource_type}/{resource_id}"): (A.WRITE, R.FHIR),
    ("DELETE", "/fhir/{resource_type}/{resource_id}"): (A.DELETE, R.FHIR),
    ("GET", "/fhir/{resource_type}/{resource_id}/_history"): (A.READ, R.FHIR),
    ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version_id}"): (A.READ, R.FHIR),
    ("GET", "/api/review/{result}"): (A.READ, R.REVIEW),
    ("POST", "/api/review/{result}"): (A.SIGN, R.REVIEW),
    ("GET", "/api/jobs"): (A.SEARCH, R.JOBS),
    ("GET", "/api/jobs/{job_id}"): (A.READ, R.JOBS),
    ("POST", "/api/jobs/{job_id}/cancel"): (A.ADMIN, R.JOBS),
    ("POST", "/api/jobs/{job_id}/retry"): (A.ADMIN, R.JOBS),
    ("GET", "/api/rules"): (A.ADMIN, R.ADMINISTRATION),
    ("POST", "/api/rules/reload"): (A.ADMIN, R.ADMINISTRATION),
    ("GET", "/api/quarantine"): (A.ADMIN, R.ADMINISTRATION),
    ("POST", "/api/quarantine/{entry}/release"): (A.ADMIN, R.ADMINISTRATION),
    ("POST", "/api/quarantine/{entry}/discard"): (A.ADMIN, R.ADMINISTRATION),
    ("GET", "/api/changes"): (A.READ, R.CHANGES),
    ("GET", "/api/webhooks"): (A.ADMIN, R.ADMINISTRATION),
    ("POST", "/api/webhooks"): (A.ADMIN, R.ADMINISTRATION),
    ("GET", "/api/webhooks/{webhook_id}"): (A.ADMIN, R.ADMINISTRATION),
    ("PUT", "/api/webhooks/{webhook_id}"): (A.ADMIN, R.ADMINISTRATION),
    ("GET", "/api/webhooks/{webhook_id}/deliveries"): (A.ADMIN, R.ADMINISTRATION),
    ("DELETE", "/api/webhooks/{webhook_id}"): (A.ADMIN, R.ADMINISTRATION),
}
"""(method, path) of every protected route -> the (action, resource) it performs."""


def route_rule(request: Request) -> tuple[Action, Resource] | None:
    """The ``ROUTES`` entry of the route ``request`` matched (None: no entry)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return ROUTES.get((method, route.path))


def authorize(request: Request, subject: SubjectDep, audit: AuditDep) -> Decision:
    """403 (audited) unless the policy allows the subject the route's action; the decision
    (with any break-glass reason) is kept on ``request.state.access``."""
    rule = route_rule(request)
    if rule is None:
        audit("refused", 403)
        raise HTTPException(403, "no access policy for this route")
    decision = decide(subject, *rule)
    if not decision:
        audit(rule[0].value, 403)
        raise HTTPException(403, decision.reason)
    request.state.access = decision
    return decision

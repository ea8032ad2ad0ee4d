"""Errors of the FHIR layer; each carries the HTTP status and the OperationOutcome to answer."""

from __future__ import annotations

from typing import Literal

from pacs.errors import PacsError
from pacs.fhir.resources import Issue, OperationOutcome


def operation_outcome(
    diagnostics: str,
    *,
    code: str = "processing",
    severity: Literal["error", "warning"] = "error",
    expression: list[str] | None = None,
) -> OperationOutcome:
    """An OperationOutcome with one issue; ``expression`` is the FHIRPath of the problem."""
    issue: Issue = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class FhirError(PacsError):
    """Base of every FHIR error: ``status`` is the HTTP status, ``outcome`` the OperationOutcome."""

    status = 500
    code = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        outcome: OperationOutcome | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.outcome = outcome or operation_outcome(
            diagnostics, code=self.code, expression=expression
        )


class StoredResourceInvalid(FhirError):
    """A stored resource no longer validates (written around the store, or a model change) (500)."""

    status = 500
    code = "exception"


class InvalidResource(FhirError):
    """The resource does not parse or does not validate against the R4B model (400)."""

    status = 400
    code = "invalid"


class UnprocessableResource(FhirError):
    """Valid syntax, but a business rule fails, e.g. a reference to a missing resource (422)."""

    status = 422
    code = "processing"


class InvalidSearch(FhirError):
    """An unknown or malformed search parameter, sort or include (400)."""

    status = 400
    code = "invalid"


class UnsupportedResourceType(FhirError):
    """A resource type this server does not implement (404)."""

    status = 404
    code = "not-supported"


class Forbidden(FhirError):
    """The access policy does not allow the caller this interaction (403)."""

    status = 403
    code = "forbidden"


class ResourceNotFound(FhirError):
    """No resource (or version) with that id (404)."""

    status = 404
    code = "not-found"


class ResourceGone(FhirError):
    """The resource was deleted (410)."""

    status = 410
    code = "deleted"


class ResourceConflict(FhirError):
    """The operation conflicts with the current state, e.g. deleting a referenced resource (409)."""

    status = 409
    code = "conflict"


class PreconditionFailed(FhirError):
    """``If-Match`` version mismatch, or a conditional operation matched several resources (412)."""

    status = 412
    code = "conflict"


class PayloadTooLarge(FhirError):
    """The request body is over ``fhir_max_body_bytes`` (413)."""

    status = 413
    code = "too-costly"


class TooCostly(FhirError):
    """The answer would carry more resources than ``fhir_max_response_resources`` (422)."""

    status = 422
    code = "too-costly"


class NotAcceptable(FhirError):
    """The client accepts only a format the server does not produce (XML, RDF) (406)."""

    status = 406
    code = "not-supported"


class UnsupportedMediaType(FhirError):
    """A body that is not FHIR JSON (415)."""

    status = 415
    code = "not-supported"

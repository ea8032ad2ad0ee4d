"""Validation of resources against the ``fhir.resources`` R4B models (wire-compatible with R4)."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from pacs.fhir.errors import InvalidResource, StoredResourceInvalid, operation_outcome
from pacs.fhir.resources import Issue, OperationOutcome

logger = logging.getLogger(__name__)


@functools.cache
def model_class(resource_type: str) -> Any:
    """The R4B model class of ``resource_type`` (KeyError if R4B has no such type)."""
    return get_fhir_model_class(resource_type)


def _expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "__root__":
            path += f".{part}"
    return path


def validate(resource: Any, expected_type: str | None = None) -> None:
    """Raise ``InvalidResource`` (OperationOutcome with one issue per problem, each with its
    FHIRPath expression) unless ``resource`` is a valid R4B resource of ``expected_type``."""
    if not isinstance(resource, dict):
        raise InvalidResource("the body is not a JSON object")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise InvalidResource("resourceType is missing", expression=["resourceType"])
    if expected_type is not None and rtype != expected_type:
        raise InvalidResource(
            f"resourceType {rtype!r} does not match the URL ({expected_type})",
            expression=["resourceType"],
        )
    try:
        cls = model_class(rtype)
    except (KeyError, ValueError, AttributeError):
        raise InvalidResource(
            f"unknown resourceType {rtype!r}", expression=["resourceType"]
        ) from None
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        issues: list[Issue] = []
        for error in exc.errors()[:20]:
            issue = operation_outcome(
                f"{error['msg']}", code="invalid", expression=[_expression(rtype, error["loc"])]
            )["issue"][0]
            issues.append(issue)
        outcome: OperationOutcome = {"resourceType": "OperationOutcome", "issue": issues}
        first = issues[0]
        raise InvalidResource(
            f"{first['expression'][0]}: {first['diagnostics']}", outcome=outcome
        ) from None
    except (TypeError, ValueError) as exc:
        raise InvalidResource(f"{rtype}: {exc}", expression=[rtype]) from None
    except RecursionError:
        raise InvalidResource(f"{rtype} is nested too deeply", expression=[rtype]) from None


def load_stored(content: str) -> dict[str, Any]:
    """A stored resource (JSON text), validated again on its way out; one that no longer
    validates raises ``StoredResourceInvalid`` (500) rather than reaching a client."""
    resource: dict[str, Any] = json.loads(content)
    try:
        validate(resource)
    except InvalidResource as exc:
        where = f"{resource.get('resourceType')}/{resource.get('id')}"
        logger.error("stored resource %s fails validation: %s", where, exc)
        raise StoredResourceInvalid(
            f"stored resource {where} fails validation", outcome=exc.outcome
        ) from None
    return resource

"""``/api/webhooks``: receivers of the change feed and their delivery log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from pacs.jobs.webhooks import (
    WebhookError,
    add_webhook,
    deliveries,
    get_webhook,
    list_webhooks,
    remove_webhook,
)

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


class WebhookBody(BaseModel):
    """A receiver to register (or update, by URL)."""

    url: str = Field(min_length=1, max_length=1024)
    secret: str = Field("", max_length=256, description="HMAC-SHA256 key of the signature.")
    kinds: list[str] = Field(default_factory=list, description="Event kinds; empty: all.")
    since: int | None = Field(None, ge=0, description="Deliver events after this seq.")


@router.get("")
def list_receivers(request: Request) -> list[dict[str, Any]]:
    """Every receiver with its cursor, failure count and next attempt."""
    return list_webhooks(request.app.state.engine)


@router.post("", status_code=201)
def add_receiver(body: WebhookBody, request: Request) -> dict[str, Any]:
    """Register a receiver; 422 for a bad URL or an unknown event kind."""
    try:
        return add_webhook(request.app.state.engine, body.url, body.secret, body.kinds, body.since)
    except WebhookError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/{webhook_id}")
def get_receiver(webhook_id: int, request: Request) -> dict[str, Any]:
    """One receiver; 404 if unknown."""
    try:
        return get_webhook(request.app.state.engine, webhook_id)
    except WebhookError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/{webhook_id}/deliveries")
def delivery_log(
    webhook_id: int, request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    """The newest delivery attempts of a receiver; 404 if unknown."""
    get_receiver(webhook_id, request)
    return deliveries(request.app.state.engine, webhook_id, limit)


@router.delete("/{webhook_id}", status_code=204)
def delete_receiver(webhook_id: int, request: Request) -> Response:
    """Remove a receiver and its log; 404 if unknown."""
    try:
        remove_webhook(request.app.state.engine, webhook_id)
    except WebhookError as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=204)

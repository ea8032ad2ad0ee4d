"""``/api/webhooks``: receivers of the change feed and their delivery log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from pacs.jobs.webhooks import (
    UnknownWebhook,
    WebhookError,
    WebhookExists,
    WebhookRefused,
    add_webhook,
    deliveries,
    get_webhook,
    list_webhooks,
    remove_webhook,
    update_webhook,
)
from pacs.net_guard import settings_guard
from viewer_api.deps import AuditDep, CurrentUser, EngineDep, SettingsDep

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


class WebhookBody(BaseModel):
    """A receiver to register (a URL already registered is changed by id, with PUT)."""

    url: str = Field(min_length=1, max_length=1024)
    secret: str = Field("", max_length=256, description="HMAC-SHA256 key of the signature.")
    kinds: list[str] = Field(default_factory=list, description="Event kinds; empty: all.")
    since: int | None = Field(
        None, ge=0, description="Deliver events after this seq (admin only); default: now."
    )


class WebhookChange(BaseModel):
    """What to change of a registered receiver (fields left out stay as they are)."""

    secret: str | None = Field(None, max_length=256, description="New HMAC-SHA256 key.")
    kinds: list[str] | None = Field(None, description="Event kinds; empty: all.")
    enabled: bool | None = None


class Webhook(BaseModel):
    """A registered receiver (``signed``: it has a secret; the secret is never shown)."""

    id: int
    url: str
    kinds: list[str]
    signed: bool
    enabled: bool
    cursor_seq: int
    failures: int
    next_attempt_at: str
    last_error: str


class Delivery(BaseModel):
    """One delivery attempt of events ``first_seq``..``last_seq``."""

    first_seq: int
    last_seq: int
    events: int
    attempt: int
    ok: bool
    status_code: int | None
    error: str
    duration_ms: float
    attempted_at: str


@router.get("")
def list_receivers(engine: EngineDep, user: CurrentUser) -> list[Webhook]:
    """Every receiver with its cursor, failure count and next attempt."""
    return [Webhook.model_validate(hook) for hook in list_webhooks(engine)]


@router.post("", status_code=201)
def add_receiver(
    body: WebhookBody,
    engine: EngineDep,
    settings: SettingsDep,
    user: CurrentUser,
    audit: AuditDep,
) -> Webhook:
    """Register a receiver, delivered from the current end of the feed on; 400 for a URL the
    SSRF guard refuses, 403 for ``since`` without the admin role, 409 for a URL already
    registered (its secret is changed by id with PUT), 422 for an unknown event kind."""
    if body.since is not None and not user.is_admin:
        audit("create", 403)
        raise HTTPException(403, "only an administrator may grant a receiver the feed history")
    try:
        hook = add_webhook(
            engine, body.url, settings_guard(settings), body.secret, body.kinds, body.since
        )
    except WebhookExists as exc:
        audit("create", 409)
        raise HTTPException(409, str(exc)) from None
    except WebhookRefused as exc:
        audit("create", 400)
        raise HTTPException(400, str(exc)) from None
    except WebhookError as exc:
        audit("create", 422)
        raise HTTPException(422, str(exc)) from None
    audit("create", 201)
    return Webhook.model_validate(hook)


@router.put("/{webhook_id}")
def change_receiver(
    webhook_id: int, body: WebhookChange, engine: EngineDep, user: CurrentUser, audit: AuditDep
) -> Webhook:
    """Change a receiver's secret, kinds or enabled flag (admin role); 404 if unknown."""
    if not user.is_admin:
        audit("update", 403)
        raise HTTPException(403, "changing a webhook receiver needs the admin role")
    try:
        hook = update_webhook(engine, webhook_id, body.secret, body.kinds, body.enabled)
    except WebhookError as exc:
        status = 404 if isinstance(exc, UnknownWebhook) else 422
        audit("update", status)
        raise HTTPException(status, str(exc)) from None
    audit("update", 200)
    return Webhook.model_validate(hook)


@router.get("/{webhook_id}")
def get_receiver(webhook_id: int, engine: EngineDep, user: CurrentUser) -> Webhook:
    """One receiver; 404 if unknown."""
    try:
        return Webhook.model_validate(get_webhook(engine, webhook_id))
    except WebhookError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/{webhook_id}/deliveries")
def delivery_log(
    webhook_id: int,
    engine: EngineDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Delivery]:
    """The newest delivery attempts of a receiver; 404 if unknown."""
    get_receiver(webhook_id, engine, user)
    return [Delivery.model_validate(d) for d in deliveries(engine, webhook_id, limit)]


@router.delete("/{webhook_id}", status_code=204)
def delete_receiver(webhook_id: int, engine: EngineDep, audit: AuditDep) -> Response:
    """Remove a receiver and its log; 404 if unknown."""
    try:
        remove_webhook(engine, webhook_id)
    except WebhookError as exc:
        audit("delete", 404)
        raise HTTPException(404, str(exc)) from None
    audit("delete", 204)
    return Response(status_code=204)

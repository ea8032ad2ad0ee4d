"""Webhooks: the change feed pushed to HTTP receivers, in order, signed, retried.

Each receiver (a ``webhook`` row) has a cursor: the last event it acknowledged with a 2xx.
The sender reads the events after the cursor, POSTs them as one JSON batch
``{"webhook": id, "events": [...]}`` and moves the cursor only on success, so a receiver sees
every event in order; after a failure it waits ``base * 2**(failures-1)`` (capped) and gets
the same batch again. A lease on the row keeps one sender per receiver across all processes.
Delivery is at least once: a process that dies between a receiver's 2xx and the cursor update
sends that batch again; receivers drop repeats by ``seq``. The sender runs in its own thread
and reads the committed feed, so a slow or dead receiver never holds up ingest.

Headers: ``X-PACS-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`` (when the
receiver has a secret) and ``X-PACS-Delivery: <webhook id>:<first seq>-<last seq>``.

Receiver URLs pass :mod:`pacs.net_guard` when registered and on every connection (no internal
addresses unless allow-listed, no redirects followed). A receiver is created once per URL; its
secret changes only through its id (:func:`update_webhook`), and it starts at the current end
of the feed unless ``since`` is given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, Table, delete, select, update
from sqlalchemy.exc import IntegrityError

from pacs.changes import KINDS, ChangeEvent, last_seq, publish, read_since
from pacs.config import Settings
from pacs.index.models import as_utc, utcnow
from pacs.jobs import JobError
from pacs.jobs import metrics as job_metrics
from pacs.jobs.models import Webhook, WebhookDelivery
from pacs.jobs.queue import Backoff, write
from pacs.net_guard import (
    SCHEMES,
    DestinationGuard,
    ForbiddenDestination,
    guarded_client,
    settings_guard,
)

log = logging.getLogger(__name__)

WEBHOOK: Table = Webhook.__table__  # type: ignore[assignment]
DELIVERY: Table = WebhookDelivery.__table__  # type: ignore[assignment]
MAX_PARALLEL = 8  # receivers delivered at once by one process


class WebhookError(JobError):
    """A webhook definition that cannot be used, or an unknown webhook."""


def signature(secret: str, body: bytes) -> str:
    """The value of the ``X-PACS-Signature`` header for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def validate(url: str, kinds: list[str], guard: DestinationGuard) -> None:
    """WebhookError unless ``url`` is an absolute http(s) URL whose host ``guard`` allows and
    every kind is known."""
    parsed = urlsplit(url)
    if parsed.scheme not in SCHEMES or not parsed.hostname or len(url) > 1024:
        raise WebhookError(f"webhook URL must be an absolute http(s) URL: {url!r}")
    unknown = sorted(set(kinds) - KINDS)
    if unknown:
        raise WebhookError(f"unknown event kind(s): {', '.join(unknown)}")
    try:
        guard.check_url(url)
    except ForbiddenDestination as exc:
        raise WebhookRefused(f"webhook URL refused: {exc}") from None


class UnknownWebhook(WebhookError, LookupError):
    """No receiver has this id."""


class WebhookRefused(WebhookError):
    """A receiver URL the SSRF guard refuses (an internal address, not allow-listed)."""


class WebhookExists(WebhookError):
    """A receiver with this URL is registered; ``pk`` is its id."""

    def __init__(self, pk: int, url: str) -> None:
        super().__init__(
            f"a receiver for {url!r} is registered as webhook {pk}; "
            f"change it with PUT /api/webhooks/{pk}"
        )
        self.pk = pk


def add_webhook(
    engine: Engine,
    url: str,
    guard: DestinationGuard,
    secret: str = "",
    kinds: list[str] | None = None,
    since: int | None = None,
) -> dict[str, Any]:
    """Register a new receiver; it gets the events after ``since`` (default: from now on).
    WebhookExists when the URL is registered: its secret is changed only by id
    (:func:`update_webhook`), never by registering the URL again."""
    kinds = kinds or []
    validate(url, kinds, guard)
    if since is None:  # "now" counts every committed event, numbered or not yet (PostgreSQL)
        with engine.begin() as publisher:
            publish(publisher)
    try:
        with write(engine) as conn:
            existing = conn.scalar(select(WEBHOOK.c.pk).where(WEBHOOK.c.url == url))
            if existing is not None:
                raise WebhookExists(int(existing), url)
            start = last_seq(conn) if since is None else since
            pk = conn.execute(
                WEBHOOK.insert().values(
                    url=url,
                    secret=secret,
                    kinds=",".join(kinds),
                    enabled=True,
                    cursor_seq=start,
                    failures=0,
                    next_attempt_at=utcnow(),
                    last_error="",
                    created_at=utcnow(),
                )
            ).inserted_primary_key[0]
    except IntegrityError:  # the same URL registered concurrently
        with engine.connect() as conn:
            winner = conn.scalar(select(WEBHOOK.c.pk).where(WEBHOOK.c.url == url))
        raise WebhookExists(int(winner or 0), url) from None
    return get_webhook(engine, int(pk))


def update_webhook(
    engine: Engine,
    pk: int,
    secret: str | None = None,
    kinds: list[str] | None = None,
    enabled: bool | None = None,
) -> dict[str, Any]:
    """Change a receiver's secret, kinds or enabled flag (None: unchanged); WebhookError if
    it is unknown or a kind is."""
    values: dict[str, Any] = {}
    if secret is not None:
        values["secret"] = secret
    if kinds is not None:
        unknown = sorted(set(kinds) - KINDS)
        if unknown:
            raise WebhookError(f"unknown event kind(s): {', '.join(unknown)}")
        values["kinds"] = ",".join(kinds)
    if enabled is not None:
        values["enabled"] = enabled
    if values:
        with write(engine) as conn:
            if not conn.execute(
                update(WEBHOOK).where(WEBHOOK.c.pk == pk).values(**values)
            ).rowcount:
                raise UnknownWebhook(f"no webhook {pk}")
    return get_webhook(engine, pk)


def remove_webhook(engine: Engine, pk: int) -> None:
    """Delete a receiver and its delivery log; WebhookError if unknown."""
    with write(engine) as conn:
        conn.execute(delete(DELIVERY).where(DELIVERY.c.webhook_pk == pk))
        if conn.execute(delete(WEBHOOK).where(WEBHOOK.c.pk == pk)).rowcount != 1:
            raise UnknownWebhook(f"no webhook {pk}")


def _json(row: Any) -> dict[str, Any]:
    return {
        "id": row.pk,
        "url": row.url,
        "kinds": [k for k in row.kinds.split(",") if k],
        "signed": bool(row.secret),
        "enabled": row.enabled,
        "cursor_seq": row.cursor_seq,
        "failures": row.failures,
        "next_attempt_at": as_utc(row.next_attempt_at).isoformat(),
        "last_error": row.last_error,
    }


def get_webhook(engine: Engine, pk: int) -> dict[str, Any]:
    """One receiver as JSON (the secret is never shown)."""
    with engine.connect() as conn:
        row = conn.execute(select(WEBHOOK).where(WEBHOOK.c.pk == pk)).fetchone()
    if row is None:
        raise UnknownWebhook(f"no webhook {pk}")
    return _json(row)


def list_webhooks(engine: Engine) -> list[dict[str, Any]]:
    """Every receiver as JSON."""
    with engine.connect() as conn:
        return [_json(r) for r in conn.execute(select(WEBHOOK).order_by(WEBHOOK.c.pk))]


def deliveries(engine: Engine, pk: int, limit: int = 100) -> list[dict[str, Any]]:
    """The newest delivery attempts of a receiver."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(DELIVERY)
            .where(DELIVERY.c.webhook_pk == pk)
            .order_by(DELIVERY.c.pk.desc())
            .limit(limit)
        ).fetchall()
    return [
        {
            "first_seq": r.first_seq,
            "last_seq": r.last_seq,
            "events": r.events,
            "attempt": r.attempt,
            "ok": r.ok,
            "status_code": r.status_code,
            "error": r.error,
            "duration_ms": r.duration_ms,
            "attempted_at": as_utc(r.attempted_at).isoformat(),
        }
        for r in rows
    ]


class WebhookSender:
    """Delivers the feed to every due receiver; ``start()`` runs it in a daemon thread."""

    def __init__(self, settings: Settings, engine: Engine, owner: str) -> None:
        self.settings = settings
        self.engine = engine
        self.owner = owner
        self.backoff = Backoff(
            settings.webhook_retry_base_seconds, settings.webhook_retry_max_seconds
        )
        self.guard = settings_guard(settings)
        self.client = guarded_client(self.guard, settings.webhook_timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: set[int] = set()

    def sync_configured(self) -> None:
        """Register ``PACS_WEBHOOK_URLS`` (with ``PACS_WEBHOOK_SECRET``) if not yet known; a
        URL the guard refuses is logged as an error and not registered."""
        for url in self.settings.webhook_urls:
            with self.engine.connect() as conn:
                known = conn.scalar(select(WEBHOOK.c.pk).where(WEBHOOK.c.url == url))
            if known is None:
                try:
                    add_webhook(self.engine, url, self.guard, self.settings.webhook_secret)
                except WebhookError as exc:
                    log.error("PACS_WEBHOOK_URLS: %s", exc)

    def start(self) -> None:
        """Deliver in a background thread until ``stop()``."""
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current delivery."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.webhook_timeout + 5)
        self.client.close()

    def _loop(self) -> None:
        """Every receiver is delivered by a thread of its own, so that one slow receiver
        does not hold up the others."""
        with ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="webhook") as pool:
            while not self._stop.is_set():
                try:
                    for hook in self._due():
                        if hook.pk not in self._in_flight:
                            self._in_flight.add(hook.pk)
                            pool.submit(self._one, hook)
                except Exception as exc:  # database down: keep trying
                    log.error("webhook round failed: %s", exc)
                self._stop.wait(0.2)

    def _one(self, hook: Any) -> None:
        try:
            self.deliver_next(hook)
        except Exception as exc:
            log.error("webhook %d: delivery round failed: %s", hook.pk, exc)
        finally:
            self._in_flight.discard(hook.pk)

    def _due(self) -> list[Any]:
        now = utcnow()
        with self.engine.connect() as conn:
            hooks = conn.execute(
                select(WEBHOOK).where(WEBHOOK.c.enabled.is_(True), WEBHOOK.c.next_attempt_at <= now)
            ).fetchall()
        return [
            hook
            for hook in hooks
            if hook.lease_owner in (None, self.owner)
            or hook.lease_expires_at is None
            or as_utc(hook.lease_expires_at) <= now
        ]

    def run_once(self) -> int:
        """One round over the due receivers in this thread; returns the events acknowledged."""
        return sum(self.deliver_next(hook) for hook in self._due())

    def deliver_next(self, hook: Any) -> int:
        """Deliver the next batch of events to one receiver; returns how many it took."""
        kinds = {k for k in hook.kinds.split(",") if k} or None
        with self.engine.connect() as conn:
            events = read_since(conn, hook.cursor_seq, self.settings.webhook_batch_size, kinds)
        if events and self._lease(hook.pk):
            return self._deliver(hook, events)
        return 0

    def _lease(self, pk: int) -> bool:
        now = utcnow()
        free = (
            (WEBHOOK.c.lease_owner.is_(None))
            | (WEBHOOK.c.lease_expires_at < now)
            | (WEBHOOK.c.lease_owner == self.owner)
        )
        with write(self.engine) as conn:
            return bool(
                conn.execute(
                    update(WEBHOOK)
                    .where(WEBHOOK.c.pk == pk, free)
                    .values(
                        lease_owner=self.owner,
                        lease_expires_at=now
                        + timedelta(seconds=self.settings.webhook_timeout + 30),
                    )
                ).rowcount
            )

    def _deliver(self, hook: Any, events: list[ChangeEvent]) -> int:
        with self.engine.connect() as conn:  # the cursor may have moved before our lease
            cursor = conn.scalar(select(WEBHOOK.c.cursor_seq).where(WEBHOOK.c.pk == hook.pk))
        events = [e for e in events if e.seq > (cursor or 0)]
        if not events:
            self._release(hook.pk, {})
            return 0
        body = json.dumps(
            {"webhook": hook.pk, "events": [e.as_json() for e in events]},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-PACS-Delivery": f"{hook.pk}:{events[0].seq}-{events[-1].seq}",
        }
        if hook.secret:
            headers["X-PACS-Signature"] = signature(hook.secret, body)
        started = time.perf_counter()
        status_code: int | None = None
        try:
            response = self.client.post(hook.url, content=body, headers=headers)
            status_code = response.status_code
            error = "" if response.is_success else f"HTTP {response.status_code}"
            if response.is_redirect:  # never followed: a redirect could point inside
                error += f" redirect to {response.headers.get('location', '')!r} not followed"
            error = error[:500]
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        duration = (time.perf_counter() - started) * 1000
        ok = not error
        failures = 0 if ok else hook.failures + 1
        values: dict[str, Any] = {"failures": failures, "last_error": error}
        if ok:
            values["cursor_seq"] = events[-1].seq
            values["next_attempt_at"] = utcnow()
        else:
            values["next_attempt_at"] = utcnow() + self.backoff.delay(failures)
        with write(self.engine) as conn:
            conn.execute(
                DELIVERY.insert().values(
                    webhook_pk=hook.pk,
                    first_seq=events[0].seq,
                    last_seq=events[-1].seq,
                    events=len(events),
                    attempt=hook.failures + 1,
                    status_code=status_code,
                    ok=ok,
                    error=error,
                    duration_ms=duration,
                    attempted_at=utcnow(),
                )
            )
            conn.execute(
                update(WEBHOOK)
                .where(WEBHOOK.c.pk == hook.pk, WEBHOOK.c.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None, **values)
            )
        job_metrics.WEBHOOK_DELIVERIES.labels("ok" if ok else "failed").inc()
        if ok:
            job_metrics.WEBHOOK_EVENTS.inc(len(events))
            return len(events)
        log.warning("webhook %d: delivery failed (%s), attempt %d", hook.pk, error, failures)
        return 0

    def _release(self, pk: int, values: dict[str, Any]) -> None:
        with write(self.engine) as conn:
            conn.execute(
                update(WEBHOOK)
                .where(WEBHOOK.c.pk == pk, WEBHOOK.c.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None, **values)
            )

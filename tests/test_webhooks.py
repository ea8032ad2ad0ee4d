"""Webhooks: every event once and in order despite failures, signed; growing backoff for a
receiver that stays down; a hanging receiver never slows ingest."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine

from pacs.changes import record
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.jobs.queue import write
from pacs.jobs.webhooks import WebhookSender, add_webhook, deliveries, signature
from pacs.net_guard import settings_guard
from pacs.runtime import build_ingest
from tests.conftest import Backend, free_port
from tests.jobs_helpers import store_study, wait_for


class Receiver:
    """An HTTP receiver that answers 500 to the first ``fail`` requests (or hangs for
    ``hang`` seconds), then 200; it keeps what it accepted."""

    def __init__(self, fail: int = 0, hang: float = 0.0) -> None:
        self.fail, self.hang = fail, hang
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                if receiver.hang:
                    time.sleep(receiver.hang)
                failing = len(receiver.requests) <= receiver.fail
                if not failing:
                    receiver.accepted.append({"headers": dict(self.headers), "body": body})
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def settings(db_backend: Backend) -> Settings:
    return db_backend.with_settings(
        webhook_retry_base_seconds=0.3,
        webhook_retry_max_seconds=5,
        webhook_batch_size=4,
        webhook_timeout=3,
        stable_after_seconds=60,
        webhook_allowed_networks="127.0.0.0/8",  # the test receivers run on this machine
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_index_engine(settings)
    yield engine
    engine.dispose()


def emit(engine: Engine, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with write(engine) as conn:
            record(conn, "object.deleted", sop_instance_uid=f"1.2.{i}")


def test_failing_twice_then_ok_gets_every_event_once_in_order(
    settings: Settings, engine: Engine
) -> None:
    receiver = Receiver(fail=2)
    add_webhook(engine, receiver.url, settings_guard(settings), secret="k3y", since=0)
    emit(engine, 10)
    sender = WebhookSender(settings, engine, "test-sender")
    sender.start()
    try:
        wait_for(
            lambda: sum(len(json.loads(r["body"])["events"]) for r in receiver.accepted) >= 10,
            20,
            "10 events delivered",
        )
        emit(engine, 3, start=10)
        wait_for(
            lambda: sum(len(json.loads(r["body"])["events"]) for r in receiver.accepted) >= 13,
            20,
            "13 events delivered",
        )
    finally:
        sender.stop()
        receiver.close()
    received = [e for r in receiver.accepted for e in json.loads(r["body"])["events"]]
    assert [e["sop_instance_uid"] for e in received] == [f"1.2.{i}" for i in range(13)]
    seqs = [e["seq"] for e in received]
    assert seqs == sorted(set(seqs))
    assert len(receiver.requests) == len(receiver.accepted) + 2
    for request in receiver.accepted:
        expected = "sha256=" + hmac.new(b"k3y", request["body"], hashlib.sha256).hexdigest()
        assert (
            request["headers"]["X-PACS-Signature"] == expected == signature("k3y", request["body"])
        )
    log = list(reversed(deliveries(engine, 1)))
    assert [d["ok"] for d in log[:3]] == [False, False, True]
    assert [d["status_code"] for d in log[:3]] == [500, 500, 200]
    assert log[0]["first_seq"] == log[2]["first_seq"]  # the same batch again


@pytest.mark.xdist_group("one-at-a-time")  # times an ingest: not beside another heavy test
def test_receiver_down_gets_growing_backoff_and_ingest_is_not_blocked(
    settings: Settings, engine: Engine
) -> None:
    down = f"http://127.0.0.1:{free_port()}/nobody"
    add_webhook(engine, down, settings_guard(settings), since=0)
    hanging = Receiver(hang=2.5)  # answers after 2.5 s: the sender waits on it
    add_webhook(engine, hanging.url, settings_guard(settings), since=0)
    emit(engine, 1)
    sender = WebhookSender(settings, engine, "test-sender")
    sender.start()
    ingest = build_ingest(settings)
    try:
        wait_for(lambda: hanging.requests, 10, "the hanging receiver's first request")
        started = time.monotonic()
        store_study(ingest, slices=5)  # while the sender hangs in a POST
        assert time.monotonic() - started < 2.0
        wait_for(
            lambda: len([d for d in deliveries(engine, 1) if not d["ok"]]) >= 4,
            15,
            "four failed attempts",
        )
    finally:
        sender.stop()
        hanging.close()
        ingest.engine.dispose()
    attempts = [d for d in reversed(deliveries(engine, 1)) if not d["ok"]]
    assert len(attempts) >= 4
    times = [
        time.mktime(time.strptime(d["attempted_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        + float("0." + d["attempted_at"][20:26])
        for d in attempts
    ]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    assert gaps[0] >= 0.29

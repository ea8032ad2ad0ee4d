"""Export of audit records as RFC 5424 syslog (ATNA) to a real local collector socket, over
UDP and TCP (octet-counted framing): one message per record, the AuditEvent JSON as MSG."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from pacs.audit import Access, Protocol, export, record_on, verify
from pacs.config import Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade

HEADER = re.compile(rb"^<(\d+)>1 (\S+) (\S+) pacs (\d+) AuditEvent - ")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_index_engine(Settings(data_dir=tmp_path / "var"))
    upgrade(engine)
    yield engine
    engine.dispose()
    export.install("")


def access(outcome: int = 200) -> Access:
    return Access(
        "dr.ivanova",
        "read",
        "/dicomweb/studies/1.2.3",
        client_address="10.0.0.7",
        outcome=outcome,
        protocol=Protocol.DICOMWEB,
        patient="P1",
        study="1.2.3",
    )


def parse(message: bytes) -> tuple[int, dict[str, Any]]:
    match = HEADER.match(message)
    assert match, message[:120]
    return int(match[1]), json.loads(message[match.end() :])


def test_udp_datagram_per_record(engine: Engine) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        export.install(f"udp://127.0.0.1:{collector.getsockname()[1]}")
        record_on(engine, access())
        record_on(engine, access(503))
        first, second = collector.recv(65536), collector.recv(65536)
    priority, event = parse(first)
    assert priority == 10 * 8 + 5  # authpriv.notice
    assert event["resourceType"] == "AuditEvent" and event["outcome"] == "0"
    assert {"value": "P1"} in [e.get("what", {}).get("identifier") for e in event["entity"]]
    priority, event = parse(second)
    assert priority == 10 * 8 + 4 and event["outcome"] == "8"  # a failure: warning


def test_tcp_octet_counted_frames(engine: Engine) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        export.install(f"tcp://127.0.0.1:{server.getsockname()[1]}")
        record_on(engine, access())
        record_on(engine, access(404))
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while data.count(b"AuditEvent - ") < 2:
                chunk = conn.recv(65536)
                assert chunk, "collector connection closed early"
                data += chunk
    messages = []
    while data:
        length, _, rest = data.partition(b" ")
        messages.append(rest[: int(length)])
        data = rest[int(length) :]
    assert [parse(m)[1]["outcome"] for m in messages] == ["0", "4"]


def test_unreachable_collector_does_not_fail_the_access(engine: Engine) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    export.install(f"tcp://127.0.0.1:{port}")  # nobody listens any more
    record_on(engine, access())  # logged, dropped; the row is written
    with engine.connect() as conn:
        assert verify(conn).checked == 1


def test_bad_url_is_refused() -> None:
    with pytest.raises(ValueError, match="udp://"):
        export.install("http://collector:514")

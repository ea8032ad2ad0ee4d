"""What a DICOM peer can make the archive hold: PDUs no longer than the maximum announced
(a forged length is aborted before anything is allocated), a C-STORE's data set held once
(about 1.1x the object), a memory budget for data sets in flight, and association slots shared
by both acceptors (A-ASSOCIATE-RJ beyond them, never an out-of-memory)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pacs.dimse.acceptor import StorageAcceptor
from pacs.dimse.ae import build_ae
from pacs.dimse.limits import AssociationSlots, MemoryBudget
from pacs.dimse.pdu import PduTooLong, read_pdu
from pacs.dimse.policy import AEPolicy
from pacs.dimse.store import StoreHandler
from pacs.runtime import build_ingest
from testkit.dicom_factory import ct_slice
from testkit.raw_dicom import (
    associate_rq,
    c_store_rq,
    p_data_header,
    pdv,
    rss_bytes,
    send_c_store,
    send_data,
)
from testkit.raw_dicom import read_pdu as read_peer_pdu
from tests.conftest import Backend, RunningArchive, make_backend, start_archive, stop_archive
from tests.dimse_tools import archive_view, dataset_part, part10_bytes

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STORAGE = [(str(CTImageStorage), str(ExplicitVRLittleEndian))]
MIXED = [*STORAGE, (STUDY_FIND, str(ExplicitVRLittleEndian))]  # served by pynetdicom
FORGED_LENGTH = 256 * 1024 * 1024
A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE, P_DATA_TF_TYPE, A_ABORT_TYPE = 0x02, 0x03, 0x04, 0x07
MiB = 1024 * 1024


# ---------------------------------------------------------------- units


def test_read_pdu_refuses_a_forged_length_before_allocating() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(p_data_header(FORGED_LENGTH) + b"\x00" * 64)
        tracemalloc.start()
        try:
            with pytest.raises(PduTooLong) as refused:
                read_pdu(ours, MiB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert refused.value.reason == 6  # A-ABORT: invalid PDU parameter value
    assert peak < 64 * 1024


def test_slots_and_budget() -> None:
    slots = AssociationSlots(2)
    assert slots.acquire() and slots.acquire()
    assert not slots.acquire()
    slots.release()
    assert slots.acquire()
    budget = MemoryBudget(10)
    assert budget.reserve(30)  # alone: one object of any size is received
    assert not budget.reserve(1)
    budget.release(30)
    assert budget.reserve(6) and budget.reserve(4)
    assert not budget.reserve(1)


# ---------------------------------------------------------------- a running archive


@pytest.fixture
def small_archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningArchive]:
    """One SCP process with three association slots, on SQLite."""
    backend = make_backend(request, tmp_path, "sqlite", "file")
    running = start_archive(
        backend,
        tmp_path / "serve.log",
        PACS_SCP_PROCESSES="1",
        PACS_MAX_ASSOCIATIONS="3",
        PACS_SERVE_WORKER="false",
        PACS_EMR_FEED="false",
    )
    try:
        yield running
    finally:
        stop_archive(running)


def _associate(port: int, contexts: list[tuple[str, str]]) -> tuple[socket.socket, int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(associate_rq(contexts))
    pdu_type, body = read_peer_pdu(sock)
    return sock, pdu_type, body


def _associate_when_free(
    port: int, contexts: list[tuple[str, str]]
) -> tuple[socket.socket, int, bytes]:
    """An association, retried while the slots of earlier (closing) connections are taken."""
    deadline = time.monotonic() + 10
    while True:
        sock, pdu_type, body = _associate(port, contexts)
        if pdu_type != A_ASSOCIATE_RJ_TYPE or time.monotonic() > deadline:
            return sock, pdu_type, body
        sock.close()
        time.sleep(0.1)


def _announced_maximum(body: bytes) -> int:
    accept = A_ASSOCIATE_AC()
    accept.decode(struct.pack(">BBI", A_ASSOCIATE_AC_TYPE, 0, len(body)) + body)
    [maximum] = [
        item
        for item in accept.to_primitive().user_information
        if isinstance(item, MaximumLengthNotification)
    ]
    return int(maximum.maximum_length_received)


def test_forged_pdu_lengths_are_aborted_on_both_acceptors(small_archive: RunningArchive) -> None:
    """12 connections (in turns of three: the slots) each announce a 256 MB P-DATA-TF: each is
    answered A-ABORT at once and the archive's memory does not grow by what they claimed."""
    port, pid = small_archive.dicom_port, small_archive.process.pid
    before = rss_bytes(pid)
    for turn in range(4):
        peers = []
        for index in range(3):
            contexts = STORAGE if (turn + index) % 2 else MIXED
            sock, pdu_type, body = _associate_when_free(port, contexts)
            assert pdu_type == A_ASSOCIATE_AC_TYPE
            assert _announced_maximum(body) == MiB
            sock.sendall(p_data_header(FORGED_LENGTH) + pdv(1, False, False, FORGED_LENGTH - 6))
            peers.append(sock)
        for sock in peers:
            with sock:
                pdu_type, body = read_peer_pdu(sock)
                assert (pdu_type, body[2:4]) == (A_ABORT_TYPE, bytes([2, 6]))
    grown = rss_bytes(pid) - before
    assert grown < 64 * MiB, f"the archive grew by {grown / MiB:.0f} MiB"


def test_association_beyond_the_slots_is_rejected_on_both_paths(
    small_archive: RunningArchive,
) -> None:
    port = small_archive.dicom_port
    idle = socket.create_connection(("127.0.0.1", port))  # holds a slot, sends nothing
    lean, lean_type, _ = _associate(port, STORAGE)
    mixed, mixed_type, _ = _associate(port, MIXED)
    assert (lean_type, mixed_type) == (A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_AC_TYPE)
    for contexts in (STORAGE, MIXED):
        extra, pdu_type, body = _associate(port, contexts)
        extra.close()
        # transient, service provider (presentation), local limit exceeded
        assert (pdu_type, body[1:4]) == (A_ASSOCIATE_RJ_TYPE, bytes([2, 3, 2]))
    idle.close()
    again, pdu_type, _ = _associate_when_free(port, MIXED)  # once the worker saw the close
    again.close()
    assert pdu_type == A_ASSOCIATE_AC_TYPE
    lean.close()
    mixed.close()


def test_an_oversized_data_set_on_a_pynetdicom_association_is_aborted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """pynetdicom holds a data set until its last fragment: past max_object_size the
    association is aborted instead of growing; the next association is served."""
    backend = make_backend(request, tmp_path, "sqlite", "file")
    running = start_archive(
        backend,
        tmp_path / "serve.log",
        PACS_SCP_PROCESSES="1",
        PACS_MAX_OBJECT_SIZE="1048576",
        PACS_MAX_ASSOCIATIONS="1",
    )
    try:
        sock, pdu_type, _ = _associate(running.dicom_port, MIXED)
        assert pdu_type == A_ASSOCIATE_AC_TYPE
        command = c_store_rq(str(CTImageStorage), generate_uid())
        with sock:
            with contextlib.suppress(OSError):  # the archive aborts while we still send
                item = pdv(1, True, True, len(command)) + command
                sock.sendall(p_data_header(len(item)) + item)
                send_data(sock, 1, b"\x00" * (4 * MiB), 256 * 1024, last=False)
            with contextlib.suppress(OSError):
                assert read_peer_pdu(sock)[0] in (A_ABORT_TYPE, 0)  # A-ABORT, or closed
        again, pdu_type, _ = _associate_when_free(running.dicom_port, MIXED)
        again.close()
        assert pdu_type == A_ASSOCIATE_AC_TYPE
        assert "data set over 1048576 bytes" in running.log()
    finally:
        stop_archive(running)


# ---------------------------------------------------------------- C-STORE memory, in process


@dataclass
class _Acceptor:
    port: socket.socket  # the peer's end of the connection
    thread: threading.Thread


def _serve(backend: Backend, budget: int) -> tuple[StorageAcceptor, StoreHandler]:
    settings = backend.settings
    policy = AEPolicy((), accept_any=True)
    store = StoreHandler(build_ingest(settings), policy)
    contexts = build_ae(settings, policy).supported_contexts
    acceptor = StorageAcceptor("PACS", contexts, policy, store, 30.0, MiB, MemoryBudget(budget))
    return acceptor, store


def _connect(acceptor: StorageAcceptor) -> _Acceptor:
    ours, peer = socket.socketpair()
    thread = threading.Thread(target=acceptor.serve, args=(ours, "127.0.0.1", lambda: None))
    thread.start()
    peer.sendall(associate_rq(STORAGE))
    assert read_peer_pdu(peer)[0] == A_ASSOCIATE_AC_TYPE
    return _Acceptor(peer, thread)


def _status(sock: socket.socket) -> tuple[int, str]:
    pdu_type, body = read_peer_pdu(sock)
    assert pdu_type == P_DATA_TF_TYPE
    command = body[6:]
    found: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(command):
        _, tag, length = struct.unpack_from("<HHI", command, offset)
        found[tag] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return struct.unpack("<H", found[0x0900])[0], found.get(0x0902, b"").decode().strip()


def _big_ct(megabytes: int) -> tuple[str, bytes]:
    side = int((megabytes * MiB / 2) ** 0.5)
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    ds.Rows = ds.Columns = side
    ds.PixelData = np.zeros((side, side), dtype=np.int16).tobytes()
    return str(ds.SOPInstanceUID), dataset_part(part10_bytes(ds))


def _close(connection: _Acceptor) -> None:
    with connection.port:
        connection.port.sendall(struct.pack(">BBII", 0x05, 0, 4, 0))  # A-RELEASE-RQ
        read_peer_pdu(connection.port)
    connection.thread.join(10)


def test_c_store_holds_the_object_about_once(db_backend: Backend) -> None:
    """A 48 MB C-STORE through the lean acceptor and the ingest: the traced peak stays under
    1.5x the object (it was 3x: PDU fragments, their join, then the Part-10 copy)."""
    acceptor, _store = _serve(db_backend, budget=1024 * MiB)
    uid, dataset = _big_ct(48)
    command = c_store_rq(str(CTImageStorage), uid)
    connection = _connect(acceptor)
    tracemalloc.start()
    try:
        send_c_store(connection.port, 1, command, dataset, MiB)
        status = _status(connection.port)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _close(connection)
    assert status == (0x0000, "")
    assert peak < 1.5 * len(dataset), f"peak {peak / MiB:.1f} MiB for {len(dataset) / MiB:.1f}"
    with archive_view(db_backend.settings) as view:
        assert set(view.assert_consistent()) == {uid}


def test_memory_budget_refuses_a_second_object_in_flight(db_backend: Backend) -> None:
    """With a 4 MiB budget, a 3 MiB object in flight leaves no room for another 3 MiB one:
    that C-STORE is refused 0xA700 with a reason; the first completes; nothing else stored."""
    acceptor, _store = _serve(db_backend, budget=4 * MiB)
    first_uid, first = _big_ct(3)
    second_uid, second = _big_ct(3)
    holding = _connect(acceptor)
    command = c_store_rq(str(CTImageStorage), first_uid)
    item = pdv(1, True, True, len(command)) + command
    holding.port.sendall(p_data_header(len(item)) + item)
    half = len(first) // 2
    send_data(holding.port, 1, first[:half], MiB, last=False)
    time.sleep(0.5)  # the acceptor has reserved the first half
    other = _connect(acceptor)
    send_c_store(other.port, 1, c_store_rq(str(CTImageStorage), second_uid), second, MiB)
    refused = _status(other.port)
    send_data(holding.port, 1, first[half:], MiB)
    stored = _status(holding.port)
    _close(other)
    _close(holding)
    assert refused[0] == 0xA700 and "out of memory" in refused[1]
    assert stored == (0x0000, "")
    assert acceptor.budget.used == 0
    with archive_view(db_backend.settings) as view:
        assert set(view.assert_consistent()) == {first_uid}


# ---------------------------------------------------------------- database outage


def test_a_database_outage_is_a_failure_status(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """PostgreSQL refuses connections while the archive runs: C-ECHO still succeeds, C-STORE
    answers 0xA700 and C-FIND a failure (0xA700), the association is not dropped, and once
    the database is back the same C-STORE succeeds."""
    backend = make_backend(request, tmp_path, "postgresql", "file")
    running = start_archive(backend, tmp_path / "serve.log", PACS_SCP_PROCESSES="1")
    url = make_url(backend.settings.database_url or "")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def allow(allowed: bool) -> None:
        with admin.connect() as conn:
            conn.execute(
                text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            )
            if not allowed:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"
                    ),
                    {"db": url.database},
                )

    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(STUDY_FIND, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    try:
        allow(False)
        assoc = ae.associate("127.0.0.1", running.dicom_port, ae_title="PACS")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0xA700
        finds = [status.Status for status, _ in assoc.send_c_find(query, STUDY_FIND)]
        assert finds == [0xA700]
        allow(True)
        deadline = time.monotonic() + 20  # the pool reconnects on its next checkout
        while (status := assoc.send_c_store(ds).Status) != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 0x0000
        assoc.release()
    finally:
        allow(True)
        admin.dispose()
        stop_archive(running)

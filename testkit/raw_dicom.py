"""Hand-made upper layer PDUs for tests that play a hostile or minimal DICOM peer, and the
resident memory of a process tree (to show what a peer made the archive allocate)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from testkit import processes

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"


def associate_rq(
    contexts: list[tuple[str, str]], calling: str = "PEER", called: str = "PACS"
) -> bytes:
    """An encoded A-ASSOCIATE-RQ proposing (abstract syntax, transfer syntax) as contexts
    1, 3, 5, ..."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed = []
    for index, (abstract, transfer) in enumerate(contexts):
        context = build_context(abstract, transfer)
        context.context_id = 2 * index + 1
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    primitive.user_information = [maximum, class_uid]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU (type, body); (0, b"") when the peer closed the connection first."""
    header = _recv(sock, 6)
    if len(header) < 6:
        return 0, b""
    (length,) = struct.unpack(">I", header[2:6])
    return header[0], _recv(sock, length)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def p_data_header(length: int) -> bytes:
    """The 6-byte header of a P-DATA-TF whose variable field claims ``length`` bytes."""
    return struct.pack(">BBI", 0x04, 0, length)


def pdv(context_id: int, command: bool, last: bool, length: int) -> bytes:
    """The 6-byte header of a PDV item carrying ``length`` bytes of value."""
    return struct.pack(">IBB", length + 2, context_id, int(command) | (int(last) << 1))


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (bytes)."""
    total = 0
    for member in (pid, *processes.descendants_of(pid)):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def c_store_rq(sop_class_uid: str, sop_instance_uid: str, message_id: int = 1) -> bytes:
    """An implicit VR little endian C-STORE-RQ command set (a data set follows)."""

    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0x0000, tag, len(value)) + value

    def uid(text: str) -> bytes:
        raw = text.encode()
        return raw + b"\x00" if len(raw) % 2 else raw

    body = b"".join(
        (
            element(0x0002, uid(sop_class_uid)),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", message_id)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, uid(sop_instance_uid)),
        )
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


def send_c_store(
    sock: socket.socket, context_id: int, command: bytes, dataset: bytes, max_pdu: int
) -> None:
    """Send one C-STORE-RQ and its data set in P-DATA-TF PDUs of at most ``max_pdu`` bytes,
    straight from ``dataset`` (no copy of it is made)."""
    item = pdv(context_id, True, True, len(command)) + command
    sock.sendall(p_data_header(len(item)) + item)
    send_data(sock, context_id, dataset, max_pdu)


def send_data(
    sock: socket.socket, context_id: int, data: bytes, max_pdu: int, last: bool = True
) -> None:
    """Send ``data`` as data set fragments in PDUs of at most ``max_pdu`` bytes; the final
    fragment is flagged last when ``last``."""
    view = memoryview(data)
    step = max_pdu - 6
    for start in range(0, len(data), step):
        chunk = view[start : start + step]
        final = last and start + step >= len(data)
        sock.sendall(p_data_header(len(chunk) + 6) + pdv(context_id, False, final, len(chunk)))
        sock.sendall(chunk)

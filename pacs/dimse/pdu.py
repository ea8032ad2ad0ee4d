"""DICOM Upper Layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 E) at the byte level.

Only what the storage acceptor's data phase needs: reading whole PDUs, walking the PDV items
of a P-DATA-TF, decoding and encoding the small implicit-VR command sets, and the fixed-size
PDUs (A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT). Association negotiation itself uses
pynetdicom's PDU classes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

from pacs.errors import PacsError

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_ABORT = 0x07

COMMAND_GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATA_SET = 0x0101

_US_ELEMENTS = {
    COMMAND_FIELD,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    COMMAND_DATA_SET_TYPE,
    STATUS,
}
_COMMAND = 0x01
_LAST = 0x02

MAX_ASSOCIATE_RQ_LENGTH = 1024 * 1024
"""Longest A-ASSOCIATE-RQ read before negotiation (hundreds of presentation contexts fit)."""

ABORT_UNEXPECTED_PDU = 2
ABORT_INVALID_PDU_PARAMETER = 6


class ProtocolError(PacsError):
    """The peer broke the upper layer protocol; the association is aborted with ``reason``
    (A-ABORT provider reason, PS3.8 9.3.8: 2 unexpected PDU, 6 invalid PDU parameter)."""

    reason = ABORT_UNEXPECTED_PDU


class PduTooLong(ProtocolError):
    """A PDU longer than the maximum length we announced; refused before it is read."""

    reason = ABORT_INVALID_PDU_PARAMETER


def recv_exact(sock: socket.socket, size: int) -> bytearray:
    """Exactly ``size`` bytes from ``sock``; ``ConnectionError`` if the peer closes first."""
    buffer = bytearray(size)
    read = 0
    with memoryview(buffer) as view:
        while read < size:
            count = sock.recv_into(view[read:], size - read)
            if not count:
                raise ConnectionError("connection closed before the PDU was complete")
            read += count
    return buffer


def read_pdu(sock: socket.socket, max_length: int) -> tuple[int, bytearray]:
    """The next PDU as (type, body); ``PduTooLong`` (nothing allocated) when its length field
    is over ``max_length``, the longest PDU we announced (PS3.8 D.1: the variable field)."""
    header = recv_exact(sock, 6)
    pdu_type = header[0]
    length = int.from_bytes(header[2:6], "big")
    if length > max_length:
        raise PduTooLong(f"PDU of {length} bytes refused: the limit is {max_length}")
    return pdu_type, recv_exact(sock, length)


def pdv_items(body: bytearray) -> Iterator[tuple[int, bool, bool, memoryview]]:
    """(presentation context ID, is command, is last fragment, data) of each PDV item."""
    view = memoryview(body)
    offset = 0
    while offset < len(body):
        if offset + 6 > len(body):
            raise ProtocolError("truncated PDV item")
        length = int.from_bytes(body[offset : offset + 4], "big")
        end = offset + 4 + length
        if length < 2 or end > len(body):
            raise ProtocolError("PDV item length does not fit the PDU")
        header = body[offset + 5]
        yield (
            body[offset + 4],
            bool(header & _COMMAND),
            bool(header & _LAST),
            view[offset + 6 : end],
        )
        offset = end


def decode_command(data: bytes) -> dict[int, int | str]:
    """The elements of an implicit VR little endian command set: US as int, others as text."""
    elements: dict[int, int | str] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, offset)
        value = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
        if group != 0x0000 or len(value) != length:
            raise ProtocolError("malformed command set")
        if element in _US_ELEMENTS and length == 2:
            elements[element] = struct.unpack("<H", value)[0]
        elif element != COMMAND_GROUP_LENGTH:
            elements[element] = bytes(value).rstrip(b"\x00 ").decode("ascii", "replace")
    return elements


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def encode_response(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    status: int,
    sop_instance_uid: str = "",
    comment: str = "",
) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set, with its group length (tags in order)."""
    body = b"".join(
        (
            _element(AFFECTED_SOP_CLASS_UID, _text(sop_class_uid, b"\x00")),
            _element(COMMAND_FIELD, struct.pack("<H", command_field)),
            _element(MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", message_id)),
            _element(COMMAND_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
            _element(STATUS, struct.pack("<H", status)),
            _element(ERROR_COMMENT, _text(comment, b" ")) if comment else b"",
            _element(AFFECTED_SOP_INSTANCE_UID, _text(sop_instance_uid, b"\x00"))
            if sop_instance_uid
            else b"",
        )
    )
    return _element(COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


def p_data_command(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF carrying one complete command set in one PDV."""
    item = struct.pack(">IBB", len(command) + 2, context_id, _COMMAND | _LAST) + command
    return struct.pack(">BBI", P_DATA_TF, 0, len(item)) + item


def a_associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def a_release_rp() -> bytes:
    """A-RELEASE-RP."""
    return struct.pack(">BBII", 0x06, 0, 4, 0)


def a_abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT; source 2 = service provider (reason: 0 unspecified, 2 unexpected PDU)."""
    return struct.pack(">BBIBBBB", A_ABORT, 0, 4, 0, 0, source, reason)

"""Send C-STORE responses without pynetdicom's generic DIMSE encoder.

pynetdicom turns every response primitive into a pydicom Dataset, validates and encodes it,
which costs about half a millisecond per C-STORE. A C-STORE-RSP command set (PS3.7 9.3.1.2)
is seven short elements in implicit VR little endian; it is encoded here directly and handed
to the DUL as one P-DATA, the same PDU pynetdicom would send. Every other message still goes
through pynetdicom.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def encode_c_store_rsp(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int, comment: str = ""
) -> bytes:
    """The encoded command set of a C-STORE-RSP, with its group length."""
    body = b"".join(
        (
            _element(0x0002, _text(sop_class_uid, b"\x00")),
            _element(0x0100, struct.pack("<H", C_STORE_RSP)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", NO_DATA_SET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x0902, _text(comment, b" ")) if comment else b"",
            _element(0x1000, _text(sop_instance_uid, b"\x00")),
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def install(assoc: Association) -> None:
    """Route this association's C-STORE responses through ``encode_c_store_rsp``."""
    dimse = assoc.dimse
    generic_send = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
            generic_send(primitive, context_id)
            return
        command = encode_c_store_rsp(
            primitive.MessageIDBeingRespondedTo,
            str(primitive.AffectedSOPClassUID or ""),
            str(primitive.AffectedSOPInstanceUID or ""),
            primitive.Status or 0,
            str(primitive.ErrorComment or ""),
        )
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]

"""Byte-level PDUs and command sets of the lean acceptor agree with pynetdicom's encoders."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE

from pacs.dimse import pdu

CT = "1.2.840.10008.5.1.4.1.1.2"


def _pynetdicom_command(message: C_STORE_RSP | C_ECHO_RSP, primitive: C_STORE | C_ECHO) -> bytes:
    message.primitive_to_message(primitive)
    [pdata] = list(message.encode_msg(1, 16382))
    [(context_id, value)] = pdata.presentation_data_value_list
    assert (context_id, value[:1]) == (1, b"\x03")  # one last command fragment
    return value[1:]


@pytest.mark.parametrize(
    ("status", "comment"),
    [(0x0000, ""), (0x0111, "first object kept"), (0xC000, "odd"), (0xA700, "x" * 64)],
)
def test_c_store_rsp_matches_pynetdicom(status: int, comment: str) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = "1.2.3.45"
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    expected = _pynetdicom_command(C_STORE_RSP(), primitive)
    ours = pdu.encode_response(pdu.C_STORE_RSP, 7, CT, status, "1.2.3.45", comment)
    assert ours == expected
    assert pdu.decode_command(ours)[pdu.STATUS] == status


def test_c_echo_rsp_matches_pynetdicom() -> None:
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 3
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    primitive.Status = 0
    expected = _pynetdicom_command(C_ECHO_RSP(), primitive)
    assert pdu.encode_response(pdu.C_ECHO_RSP, 3, "1.2.840.10008.1.1", 0) == expected


def test_pdv_items_and_p_data_round_trip() -> None:
    command = pdu.encode_response(pdu.C_STORE_RSP, 1, CT, 0, "1.2.3")
    encoded = pdu.p_data_command(5, command)
    assert encoded[0] == pdu.P_DATA_TF
    assert int.from_bytes(encoded[2:6], "big") == len(encoded) - 6
    [(context_id, is_command, last, data)] = list(pdu.pdv_items(bytearray(encoded[6:])))
    assert (context_id, is_command, last, bytes(data)) == (5, True, True, command)


@pytest.mark.parametrize(
    "body",
    [b"\x00\x00\x00\x09\x01\x03ab", b"\x00\x00\x00\x01\x01", b"\x00\x00"],
)
def test_malformed_pdv_items_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(pdu.ProtocolError):
        list(pdu.pdv_items(bytearray(body)))


def test_malformed_command_set_is_a_protocol_error() -> None:
    with pytest.raises(pdu.ProtocolError):
        pdu.decode_command(b"\x08\x00\x10\x00\x04\x00\x00\x00abcd")  # group 0008, not 0000

"""The hand-encoded C-STORE-RSP equals pynetdicom's own encoding, byte for byte."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from pacs.dimse.fast_response import encode_c_store_rsp


@pytest.mark.parametrize(
    ("status", "comment"),
    [(0x0000, ""), (0x0111, "first object kept"), (0xC000, "odd"), (0xA700, "x" * 64)],
)
def test_c_store_rsp_matches_pynetdicom(status: int, comment: str) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.3.45"
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    fragments = [
        value
        for pdata in message.encode_msg(1, 16382)
        for _, value in pdata.presentation_data_value_list
    ]
    assert [f[:1] for f in fragments] == [b"\x03"]  # one last command fragment
    expected = fragments[0][1:]
    ours = encode_c_store_rsp(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", status, comment)
    assert ours == expected

"""The hand-written file meta encoder matches pydicom's, byte for byte."""

from __future__ import annotations

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from pacs.dimse.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PREAMBLE,
    file_meta,
    part10,
)


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax", "ae"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1", "STORESCU"),
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", "1.2.840.10008.1.2.4.90", "MR1"),
        ("1.2.840.10008.5.1.4.1.1.7", "9.87654321", "1.2.840.10008.1.2", "ODDLENGTHAE"),
    ],
)
def test_file_meta_equals_pydicom(sop_class: str, sop_instance: str, syntax: str, ae: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = ae
    expected = DicomBytesIO()
    expected.is_little_endian, expected.is_implicit_VR = True, False
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert file_meta(sop_class, sop_instance, syntax, ae) == expected.getvalue()


def test_part10_keeps_the_data_set_bytes() -> None:
    data = b"\x08\x00\x16\x00\x04\x00abcd"
    out = part10(data, "1.2.3", "1.2.3.4", "1.2.840.10008.1.2", "X")
    assert out.startswith(PREAMBLE)
    assert out.endswith(data)

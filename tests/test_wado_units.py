"""Metadata documents, frame indexes and WADO-RS content negotiation, without a server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from pacs.metadata.document import (
    BASE_PLACEHOLDER,
    BULK_DATA_THRESHOLD,
    FrameIndex,
    build_document,
    frame_index,
    tag_path,
)
from testkit.dicom_factory import ct_slice
from tests.dimse_tools import part10_bytes
from tests.wado_data import native_multiframe
from viewer_api.wado import media
from viewer_api.wado.render import RenderError, Window, parse_viewport, parse_window, to_8bit


def document_of(ds):  # type: ignore[no-untyped-def]
    data = part10_bytes(ds)
    doc = build_document(
        data, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1"
    )
    return data, doc


def test_document_keeps_large_binary_values_out() -> None:
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=16)
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091001, "OB", b"\x01" * (BULK_DATA_THRESHOLD + 2))
    ds.add_new(0x00091002, "OB", b"\x02" * 4)
    _, doc = document_of(ds)
    body = json.loads(doc.json)
    assert body["00091001"]["BulkDataURI"].startswith(BASE_PLACEHOLDER + "/studies/")
    assert body["00091001"]["BulkDataURI"].endswith("/bulk/00091001")
    assert body["00091002"]["InlineBinary"] == "AgICAg=="
    assert "BulkDataURI" in body["7FE00010"] and "Value" not in body["7FE00010"]
    assert body["00100010"]["Value"] == [{"Alphabetic": "Phantom^Chest"}]


def test_native_frame_index_points_at_each_frame() -> None:
    ds = native_multiframe(generate_uid(), frames=3, size=8)
    data, doc = document_of(ds)
    assert doc.frames is not None and not doc.frames.encapsulated
    for k, ((offset, length),) in enumerate(doc.frames.frames, start=1):
        assert np.all(np.frombuffer(data[offset : offset + length], "<i2") == 100 * k)
    assert FrameIndex.from_bytes(doc.frames.to_bytes()) == doc.frames


def test_encapsulated_frames_of_several_fragments_with_offset_table() -> None:
    ds = native_multiframe(generate_uid(), frames=2, size=8)
    frames = [b"\xff\x4f" + bytes([k]) * 40 for k in (1, 2)]  # two "codestreams"
    ds.PixelData = encapsulate(frames, fragments_per_frame=3, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    data, doc = document_of(ds)
    assert doc.frames is not None and doc.frames.encapsulated
    assert [len(f) for f in doc.frames.frames] == [3, 3]
    rebuilt = [b"".join(data[o : o + n] for o, n in frame) for frame in doc.frames.frames]
    assert [r.rstrip(b"\0") for r in rebuilt] == [f.rstrip(b"\0") for f in frames]


@pytest.mark.parametrize("cut", [8, 20])  # the sequence delimiter; into the last fragment
def test_truncated_fragments_are_refused(cut: int) -> None:
    ds = native_multiframe(generate_uid(), frames=2, size=8)
    ds.PixelData = encapsulate([b"\xff\x4f" + bytes([k]) * 2000 for k in (1, 2)], has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    data = part10_bytes(ds)
    stored = dcmread(io.BytesIO(data), defer_size=BULK_DATA_THRESHOLD)
    index = frame_index(stored, data)
    assert index is not None and [len(f) for f in index.frames] == [1, 1]
    with pytest.raises(ValueError):
        frame_index(stored, data[:-cut])


def test_rle_frames_without_offset_table() -> None:
    ds = native_multiframe(generate_uid(), frames=2, size=8)
    ds.compress(RLELossless)
    data, doc = document_of(ds)
    assert doc.frames is not None and len(doc.frames.frames) == 2
    decoded = dcmread(io.BytesIO(data))
    assert decoded.NumberOfFrames == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7FE00010", [0x7FE00010]), ("00540016/0/00181072", [0x00540016, "0", 0x00181072])],
)
def test_tag_paths(text: str, expected: list[object]) -> None:
    assert tag_path(text) == expected


@pytest.mark.parametrize("text", ["7FE0", "00540016/0", "00540016/x/00181072", "zzzzzzzz"])
def test_bad_tag_paths(text: str) -> None:
    with pytest.raises(ValueError):
        tag_path(text)


def test_instance_negotiation() -> None:
    explicit = "1.2.840.10008.1.2.1"
    assert media.instance_syntax("") == (explicit, False)
    assert media.instance_syntax('multipart/related; type="application/dicom"') == (
        explicit,
        False,
    )
    assert media.instance_syntax(
        'multipart/related; type="application/dicom"; transfer-syntax=*'
    ) == ("*", True)
    with pytest.raises(media.NotAcceptable):
        media.instance_syntax("application/json")
    media.check_syntax(explicit, str(JPEG2000Lossless), decodable=True)
    with pytest.raises(media.NotAcceptable):
        media.check_syntax(str(JPEG2000Lossless), explicit, decodable=True)
    with pytest.raises(media.NotAcceptable):
        media.check_syntax(explicit, str(JPEG2000Lossless), decodable=False)


def test_frame_negotiation() -> None:
    j2k = str(JPEG2000Lossless)
    assert media.frame_choice("", j2k, True) == media.FrameChoice("image/jp2", j2k)
    assert media.frame_choice('multipart/related; type="image/jp2"', j2k, True).media_type == (
        "image/jp2"
    )
    decoded = media.frame_choice('multipart/related; type="application/octet-stream"', j2k, True)
    assert decoded == media.FrameChoice("application/octet-stream", "1.2.840.10008.1.2.1")
    with pytest.raises(media.NotAcceptable):
        media.frame_choice('multipart/related; type="application/octet-stream"', j2k, False)
    with pytest.raises(media.NotAcceptable):
        media.frame_choice('multipart/related; type="image/jpeg"', j2k, True)
    native = media.frame_choice("", "1.2.840.10008.1.2", True)
    assert native.media_type == "application/octet-stream"


def test_window_functions_and_parameters() -> None:
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=4)
    values = np.array([[-1000, -200, 0, 200]], dtype=np.int16)
    linear = to_8bit(ds, values, Window(0, 400))
    assert linear[0, 0] == 0 and linear[0, 1] == 0 and linear[0, 3] == 255
    assert 126 <= linear[0, 2] <= 129
    sigmoid = to_8bit(ds, values, Window(0, 400, "SIGMOID"))
    assert sigmoid[0, 2] == 128 and sigmoid[0, 0] == 0
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert to_8bit(ds, values, Window(0, 400))[0, 0] == 255
    assert parse_window("40,400,linear_exact") == Window(40, 400, "LINEAR_EXACT")
    assert parse_viewport("64,32,0,0,-10,10") is not None
    for bad in ("1", "a,b", "40,0", "40,400,GAMMA"):
        with pytest.raises(RenderError):
            parse_window(bad)
    for bad in ("0,10", "10", "10,10,1,1,0,5"):
        with pytest.raises(RenderError):
            parse_viewport(bad)


def test_a_value_pydicom_cannot_read_does_not_lose_the_document() -> None:
    ds = ct_slice(generate_uid(), generate_uid(), 0, size=8)
    data = part10_bytes(ds)
    needle = b"\x18\x00\x50\x00DS\x04\x001.0 "  # SliceThickness "1.0 "
    assert needle in data
    data = data.replace(needle, b"\x18\x00\x50\x00DS\x04\x00abc ")
    doc = build_document(
        data, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1"
    )
    body = json.loads(doc.json)
    assert body["00180050"] == {"vr": "DS"}  # kept out, named by its VR
    assert body["00080018"]["Value"] == [ds.SOPInstanceUID]


def _normalised(value: object) -> object:
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return (value.strip() or None) if isinstance(value, str) else value


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "SC_rgb_rle.dcm"]
)
def test_fast_conversion_agrees_with_pydicom(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit and implicit VR (ambiguous US/SS), big endian: the same JSON as pydicom's own
    conversion, up to trimmed text and null empty values."""
    from pydicom.data import get_testdata_file

    import pacs.metadata.document as document

    path = get_testdata_file(name)
    assert path is not None
    data = Path(path).read_bytes()
    fast = json.loads(build_document(data, "1.2", "1.3", "1.4", "1.2.840.10008.1.2").json)
    monkeypatch.setattr(document, "_fast_json", lambda *args: None)
    slow = json.loads(build_document(data, "1.2", "1.3", "1.4", "1.2.840.10008.1.2").json)
    assert _normalised(fast) == _normalised(slow)


def test_one_dicom_json_element_writer() -> None:
    from pacs.metadata.dicom_json import dumps, element

    assert element("UI", ["1.2.3"]) == {"vr": "UI", "Value": ["1.2.3"]}
    assert element("SQ", []) == {"vr": "SQ"}  # PS3.18 F.2.5: no Value when empty
    assert dumps({"00100010": element("PN", [{"Alphabetic": "Ж"}])}) == (
        '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Ж"}]}}'.encode()
    )

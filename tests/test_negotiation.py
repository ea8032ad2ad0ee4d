"""The one Accept/Content-Type helper (viewer_api.negotiation) that QIDO-RS, STOW-RS, WADO-RS
and the FHIR API negotiate with."""

from __future__ import annotations

import pytest

from viewer_api.negotiation import DICOM_JSON, OCTET_STREAM, accepts, matches, media_ranges
from viewer_api.wado import media


@pytest.mark.parametrize(
    ("accept", "admitted"),
    [
        ("", True),
        ("application/dicom+json", True),
        ("Application/DICOM+JSON; charset=utf-8", True),
        ("application/json", True),
        ("application/*", True),
        ("*/*;q=0.1", True),
        ("image/png, text/*", False),
        ("application/dicom+json;q=0, image/png", False),
        ('multipart/related; type="application/dicom+json"', False),
        ('text/plain; x="a,b", application/json', True),
    ],
)
def test_dicom_json_is_admitted_alike_everywhere(accept: str, admitted: bool) -> None:
    assert accepts(accept, DICOM_JSON, "application/json") is admitted
    if admitted:
        assert media.metadata_type(accept) == DICOM_JSON
    else:
        with pytest.raises(media.NotAcceptable):
            media.metadata_type(accept)


def test_parts_of_multipart_count_only_when_asked() -> None:
    accept = 'multipart/related; type="application/octet-stream"'
    assert not accepts(accept, OCTET_STREAM)
    assert accepts(accept, OCTET_STREAM, in_multipart=True)


def test_ranges_best_first_and_wildcards() -> None:
    ranges = media_ranges("image/*;q=0.2, image/png;q=0.9, */*;q=0.1")
    assert [r.media_type for r in ranges] == ["image/png", "image/*", "*/*"]
    assert matches("image/*", "image/jpeg") and not matches("image/*", "application/json")

"""The radiologist's verified report as DICOM: a new Comprehensive SR, VerificationFlag
VERIFIED, with the Verifying Observer, stored into the study beside the AI's own SR.

The AI's SEG and SR are never changed. The new SR names the signed-off findings (accepted
and amended values; rejected ones are left out and listed as rejected), the conclusion, and
references the AI's SR as its evidence (or the source series' first image if the result has
no SR), so a viewer can go from one to the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pacs.emr.report import GRADES, MEASUREMENTS
from pacs.ingest.derived import ARCHIVE_MANUFACTURER

SERIES_NUMBER = 9003
_SCHEME = "99PACS"
_UNITS = {"mL": Code("mL", "UCUM", "milliliter"), "%": Code("%", "UCUM", "percent")}
REPORT_TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
IMPRESSION = Code("121073", "DCM", "Impression")
FINDING = Code("121071", "DCM", "Finding")


def _concept(key: str) -> Code:
    return Code(key[:16], _SCHEME, MEASUREMENTS[key].display[:64])


def _content(findings: Sequence[Mapping[str, Any]], conclusion: str) -> hd.sr.ContainerContentItem:
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE, template_id="2000")
    items: list[Dataset] = []
    for finding in findings:
        key, value, action = finding["code"], finding["value"], finding["action"]
        if action == "reject":
            items.append(
                hd.sr.TextContentItem(
                    name=FINDING,
                    value=f"{MEASUREMENTS[key].display}: rejected by the radiologist"[:1024],
                    relationship_type=contains,
                )
            )
        elif MEASUREMENTS[key].unit:
            items.append(
                hd.sr.NumContentItem(
                    name=_concept(key),
                    value=float(value),
                    unit=_UNITS[MEASUREMENTS[key].unit],
                    relationship_type=contains,
                )
            )
        else:
            items.append(
                hd.sr.CodeContentItem(
                    name=_concept(key),
                    value=Code(str(value), _SCHEME, GRADES[str(value)][:64]),
                    relationship_type=contains,
                )
            )
    items.append(
        hd.sr.TextContentItem(name=IMPRESSION, value=conclusion, relationship_type=contains)
    )
    root.ContentSequence = DicomSequence(items)
    return root


def build_verified_sr(
    evidence: Dataset,
    findings: Sequence[Mapping[str, Any]],
    conclusion: str,
    signer: str,
    organisation: str,
    signed_at: datetime,
    result_key: str,
) -> hd.sr.ComprehensiveSR:
    """The verified SR of a sign-off (``findings``: code, action, value after review)."""
    series_uid = str(generate_uid(prefix=None, entropy_srcs=[result_key, "verified-series"]))
    sr = hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=_content(findings, conclusion),
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=str(generate_uid(prefix=None)),
        instance_number=1,
        manufacturer=ARCHIVE_MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=_person_name(signer),
        verifying_organization=(organisation or "Unknown")[:64],
        series_description="Radiologist-verified report",
    )
    sr.VerifyingObserverSequence[0].VerificationDateTime = signed_at.strftime("%Y%m%d%H%M%S%z")
    sr.SpecificCharacterSet = "ISO_IR 192"
    return sr


def _person_name(name: str) -> str:
    """A user name as DICOM PN (kept as one component when it has no ``^``)."""
    name = name.replace("\\", " ")[:63] or "Unknown"
    return name if "^" in name else name + "^"

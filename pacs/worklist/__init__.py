"""Modality Worklist: scheduled procedure steps made from active FHIR ServiceRequests.

``items`` maps a ServiceRequest (with its Patient, requester, performers) to a
``WorklistItem``; ``matching`` applies MWL C-FIND matching keys; ``response`` builds the
response identifier in the requested character set; ``source`` reads the requests from the
FHIR store. The DIMSE side is ``pacs.dimse.worklist``.
"""

from __future__ import annotations

from pacs.worklist.items import WorklistItem, item_from_service_request
from pacs.worklist.matching import WorklistQueryError, matches
from pacs.worklist.response import response

__all__ = [
    "WorklistItem",
    "WorklistQueryError",
    "item_from_service_request",
    "matches",
    "response",
]

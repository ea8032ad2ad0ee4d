"""EMR link: the archive's studies and AI results projected into FHIR, and the review flow.

Modules: ``identifiers`` (identifier systems and code systems), ``projection`` (ImagingStudy
from the index), ``report`` (DiagnosticReport / Observation / Device / Provenance from an AI
result), ``feed`` (the change-feed consumer that keeps them in step), ``review`` (sign-off),
``verified_sr`` (the radiologist's VERIFIED SR), ``tables`` (feed positions, AI reports,
review decisions).
"""

from __future__ import annotations

from pacs.errors import PacsError


class EmrLinkError(PacsError):
    """Base exception of the EMR link."""

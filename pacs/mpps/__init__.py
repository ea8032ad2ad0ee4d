"""Modality Performed Procedure Step: what the modality reports it did (N-CREATE / N-SET),
kept durably (``tables``) and reflected in FHIR (``service``: a Procedure per step, the
referral's status, the step off the worklist). The DIMSE side is ``pacs.dimse.mpps``."""

"""Identity, access policy and consent: who is calling (:mod:`pacs.security.subject`) and what
they may do, the same for DIMSE, DICOMweb, FHIR and ``/api``."""

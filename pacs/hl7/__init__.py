"""HL7 v2 orders: ORM^O01 / OMI^O23 into FHIR ServiceRequests (the Modality Worklist), from
files (``pacs worklist import``) or an MLLP listener (``PACS_HL7_PORT``) that acknowledges
each message after it is durably stored."""

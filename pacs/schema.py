"""Every index table in one metadata, for migrations and schema checks.

The index package provides the engine, the declarative ``Base`` and the migration runner, and
knows no feature. Each feature owns its tables in its own module on that ``Base``; this module
sits above the features and imports each of them, so nothing is missed.
"""

from __future__ import annotations

from inference import records as inference_records  # noqa: F401  (ai_result)
from pacs import changes  # noqa: F401  (change_event)
from pacs.audit import tables as audit_tables  # noqa: F401  (audit_event, audit_chain)
from pacs.emr import tables as emr_tables  # noqa: F401  (feed_position, ai_report, review)
from pacs.fhir import schema as fhir_schema  # noqa: F401  (fhir_resource, search indexes)
from pacs.index.models import Base  # patient, study, series, instance, remote_ae
from pacs.ingest import quarantine  # noqa: F401  (quarantine)
from pacs.jobs import models as jobs_models  # noqa: F401  (study_state, job, webhook, ...)
from pacs.metadata import records  # noqa: F401  (instance_metadata)
from pacs.mpps import tables as mpps_tables  # noqa: F401  (mpps)
from pacs.query import indexes as query_indexes  # noqa: F401  (ix_patient_name_lower)
from pacs.security import tables as security_tables  # noqa: F401  (user_account)

metadata = Base.metadata

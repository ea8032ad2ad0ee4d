"""Every index table in one metadata, for migrations and schema checks.

Tables of other concerns (jobs, study lifecycle, FHIR resources, AI results) live in their own
modules on the same ``Base``; each such module is imported here so nothing is missed.
"""

from __future__ import annotations

from inference import records as inference_records  # noqa: F401  (ai_result)
from pacs import changes  # noqa: F401  (change_event)
from pacs.emr import tables as emr_tables  # noqa: F401  (feed_position, ai_report, review)
from pacs.fhir import schema as fhir_schema  # noqa: F401  (fhir_resource, search indexes)
from pacs.index.models import Base
from pacs.ingest import quarantine  # noqa: F401  (quarantine)
from pacs.jobs import models as jobs_models  # noqa: F401  (study_state, job, webhook, ...)
from pacs.metadata import records  # noqa: F401  (instance_metadata)
from pacs.query import indexes as query_indexes  # noqa: F401  (ix_patient_name_lower)

metadata = Base.metadata

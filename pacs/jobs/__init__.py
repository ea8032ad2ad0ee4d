"""Study lifecycle, routing rules and the durable job queue that runs analyses."""

from pacs.errors import PacsError


class JobError(PacsError):
    """Base class of the errors of job orchestration."""

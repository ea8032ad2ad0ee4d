"""Where an object came from."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Source:
    """Sender of an object: recorded on the instance and the series.

    ``derived`` is set by the archive's own store paths (analysis results, verified SRs): see
    ``pacs.ingest.derived`` for what a derived object may not do.
    """

    channel: str  # "dimse", "stow", "import", "analysis", "review"
    ae_title: str = ""
    host: str = ""
    organisation: str = ""
    derived: bool = False

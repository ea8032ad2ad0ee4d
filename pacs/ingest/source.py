"""Where an object came from."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Source:
    """Sender of an object: recorded on the instance and the series."""

    channel: str  # "dimse", "stow", "import"
    ae_title: str = ""
    host: str = ""
    organisation: str = ""

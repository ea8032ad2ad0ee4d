"""Calling-AE policy: which peers may open associations, and their organisation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KnownAE:
    """An allowed peer: AE title, host ('*' = any address) and the organisation it belongs to."""

    title: str
    host: str = "*"
    organisation: str = ""

    @classmethod
    def parse(cls, text: str) -> KnownAE:
        """Parse ``TITLE[@host][=Organisation]``."""
        spec, _, organisation = text.partition("=")
        title, _, host = spec.partition("@")
        title = title.strip()
        if not 0 < len(title) <= 16 or "\\" in title:
            raise ValueError(f"invalid AE title in allow-list entry {text!r}")
        return cls(title=title, host=host.strip() or "*", organisation=organisation.strip())


class AEPolicy:
    """Decides whether a (calling AE title, peer address) pair may associate."""

    def __init__(self, known: list[KnownAE], accept_any: bool) -> None:
        self.known = known
        self.accept_any = accept_any

    @classmethod
    def from_setting(cls, allowed_aes: str, accept_any: bool) -> AEPolicy:
        """Build from the comma-separated ``allowed_aes`` setting."""
        known = [KnownAE.parse(item) for item in allowed_aes.split(",") if item.strip()]
        return cls(known, accept_any)

    def match(self, title: str, host: str) -> KnownAE | None:
        """The allow-list entry for this peer, or None."""
        title = title.strip()
        for entry in self.known:
            if entry.title == title and entry.host in ("*", host):
                return entry
        return None

    def is_allowed(self, title: str, host: str) -> bool:
        """True if the peer may associate."""
        return self.accept_any or self.match(title, host) is not None

    def organisation(self, title: str, host: str) -> str:
        """The organisation of a peer ('' when unknown)."""
        entry = self.match(title, host)
        return entry.organisation if entry else ""

    @property
    def titles(self) -> list[str]:
        """AE titles of the allow-list (for the A-ASSOCIATE-RJ check)."""
        return sorted({entry.title for entry in self.known})

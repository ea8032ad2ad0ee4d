"""Calling-AE policy: which peers may open associations, and their organisation."""

from __future__ import annotations

from collections.abc import Sequence

from pacs.config import KnownAE


class AEPolicy:
    """Decides whether a (calling AE title, peer address) pair may associate."""

    def __init__(self, known: Sequence[KnownAE], accept_any: bool) -> None:
        self.known = tuple(known)
        self.accept_any = accept_any

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

"""Calling-AE policy: which peers may open associations, their organisation, and the
access-policy subject (:class:`~pacs.security.subject.Subject`) a calling AE acts as.

The subject of a calling AE (C-FIND, C-GET, C-MOVE, MWL):

- an AE whose allow-list entry (``PACS_ALLOWED_AES`` ``TITLE@host=Organisation``) or
  registry entry (``pacs ae add``, same title *and* host) names an organisation acts for
  that organisation (role ``modality``): it queries and retrieves that organisation's data;
- an AE with no organisation, while the DICOM server is bound to a loopback address and no
  allow-list entry names an organisation (the embedded default): a trusted local system,
  every study, as before the access policy;
- any other AE with no organisation reaches no data (C-STORE and C-ECHO still work when the
  association is accepted).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from pacs.aes import registered_organisation
from pacs.config import KnownAE
from pacs.security.subject import Role, Subject, SubjectKind


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


def is_loopback(host: str) -> bool:
    """Whether a bind address is a loopback address (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CallingAE:
    """Resolves a calling AE to the subject the access policy decides for (module doc)."""

    def __init__(self, policy: AEPolicy, sessions: Callable[[], Session], bind_host: str) -> None:
        self.policy = policy
        self.sessions = sessions
        self.trust_unnamed = is_loopback(bind_host) and not any(
            entry.organisation for entry in policy.known
        )

    def of(self, event: Any) -> Subject:
        """The subject of the peer that requested ``event``'s association."""
        requestor = event.assoc.requestor
        return self.subject(str(requestor.ae_title), str(requestor.address))

    def subject(self, title: str, host: str) -> Subject:
        """The subject of the peer ``title`` at ``host``."""
        title = title.strip()
        organisation = self.policy.organisation(title, host)
        if not organisation:
            with self.sessions() as session:
                organisation = registered_organisation(session, title, host)
        if organisation:
            return Subject(
                title, SubjectKind.AE, frozenset({Role.MODALITY}), organisation, client_address=host
            )
        if self.trust_unnamed:
            return Subject(
                title,
                SubjectKind.AE,
                frozenset({Role.SYSTEM}),
                scopes=frozenset({"system/*.cruds"}),
                client_address=host,
            )
        return Subject(title, SubjectKind.AE, frozenset({Role.MODALITY}), client_address=host)

"""The registry of remote Application Entities (destinations of C-STORE and C-MOVE).

Every write goes through :func:`validate`, so the CLI and the HTTP API accept exactly the
same values; titles are compared exactly (AE titles are case-sensitive), after stripping the
leading and trailing spaces PS3.5 declares insignificant.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pacs.config import Settings
from pacs.errors import PacsError
from pacs.index.engine import WRITE, create_index_engine, session_factory
from pacs.index.migrate import upgrade
from pacs.index.models import RemoteAE, utcnow


class AERegistryError(PacsError):
    """Base class of registry errors."""


class InvalidAEError(AERegistryError, ValueError):
    """A title, host, port or text field is not acceptable; ``field`` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownAEError(AERegistryError, LookupError):
    """No remote AE is registered under that title."""


def _printable(value: str) -> bool:
    return all(" " <= char <= "~" for char in value)


def validate_title(title: str) -> str:
    """PS3.5 AE VR: 1-16 printable ASCII characters, no backslash; returns it stripped."""
    return _validate_printable("title", "AE title", title, 16, "\\", "backslash")


def validate_host(host: str) -> str:
    """A host name or IP address: 1-255 printable characters without spaces."""
    return _validate_printable("host", "host", host, 255, " ", "spaces")


def _validate_printable(
    field: str, label: str, value: str, limit: int, forbidden: str, forbidden_name: str
) -> str:
    value = value.strip()
    if not 0 < len(value) <= limit:
        raise InvalidAEError(field, f"{label} must be 1-{limit} characters")
    if forbidden in value or not _printable(value):
        raise InvalidAEError(field, f"{label} must be printable ASCII without {forbidden_name}")
    return value


def validate_port(port: int) -> int:
    """A TCP port, 1-65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise InvalidAEError("port", "port must be an integer 1-65535")
    return port


def _validate_text(name: str, value: str, limit: int) -> str:
    value = value.strip()
    if len(value) > limit or any(char < " " for char in value):
        raise InvalidAEError(
            name, f"{name} must be at most {limit} characters, no control characters"
        )
    return value


@dataclass(frozen=True, slots=True)
class AESpec:
    """Validated values of one registry entry (the constructor validates)."""

    title: str
    host: str
    port: int
    organisation: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "title", validate_title(self.title))
        object.__setattr__(self, "host", validate_host(self.host))
        object.__setattr__(self, "port", validate_port(self.port))
        object.__setattr__(
            self, "organisation", _validate_text("organisation", self.organisation, 128)
        )
        object.__setattr__(
            self, "description", _validate_text("description", self.description, 255)
        )


def get_ae(session: Session, title: str) -> RemoteAE:
    """The entry registered under ``title``; raise :class:`UnknownAEError` if none."""
    found = session.scalar(select(RemoteAE).where(RemoteAE.title == validate_title(title)))
    if found is None:
        raise UnknownAEError(f"no remote AE titled {title.strip()!r}")
    return found


def registered_organisation(session: Session, title: str, host: str) -> str:
    """The organisation of the registry entry with this title *and* host ('' if none): a
    calling AE is known by where it calls from, not only by the title it claims."""
    found = session.scalar(
        select(RemoteAE.organisation).where(RemoteAE.title == title.strip(), RemoteAE.host == host)
    )
    return found or ""


def list_aes(session: Session) -> Sequence[RemoteAE]:
    """Every entry, ordered by title."""
    return session.scalars(select(RemoteAE).order_by(RemoteAE.title)).all()


def put_ae(session: Session, spec: AESpec) -> tuple[RemoteAE, bool]:
    """Create or update the entry for ``spec.title`` and commit; (entry, created).

    Two concurrent creations of one title: the loser's insert hits the unique constraint and
    it updates the winner's row instead.
    """
    try:
        return _put(session, spec)
    except IntegrityError:
        session.rollback()
        return _put(session, spec)


def _begin_write(session: Session) -> None:
    """Start the session's transaction as a write (``BEGIN IMMEDIATE`` on SQLite), so a
    read-then-write never fails on SQLite's lock upgrade under concurrent writers."""
    if not session.in_transaction():
        session.connection(execution_options=WRITE)


def _put(session: Session, spec: AESpec) -> tuple[RemoteAE, bool]:
    _begin_write(session)
    entry = session.scalar(select(RemoteAE).where(RemoteAE.title == spec.title))
    created = entry is None
    if entry is None:
        entry = RemoteAE(title=spec.title, created_at=utcnow())
        session.add(entry)
    entry.host, entry.port = spec.host, spec.port
    entry.organisation, entry.description = spec.organisation, spec.description
    entry.updated_at = utcnow()
    session.commit()
    return entry, created


def remove_ae(session: Session, title: str) -> None:
    """Delete the entry for ``title`` and commit; raise :class:`UnknownAEError` if none."""
    title = validate_title(title)
    _begin_write(session)
    try:
        entry = get_ae(session, title)
    except UnknownAEError:
        session.rollback()  # release the write lock at once
        raise
    session.delete(entry)
    session.commit()


@contextmanager
def migrated_session(settings: Settings) -> Iterator[Session]:
    """A session on the index after applying its migrations (for command-line tools)."""
    engine = create_index_engine(settings)
    try:
        upgrade(engine)
        with session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()

"""Local accounts (``PACS_AUTH=local``): added, listed and disabled with ``pacs users``,
checked at the login page, and the first administrator created on first start.

Passwords are stored as argon2id hashes (``argon2-cffi``, its RFC 9106 low-memory profile);
a wrong name and a wrong password take the same time and give the same answer."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pacs.index.models import as_utc
from pacs.security.errors import AccountError
from pacs.security.subject import Role, Subject, SubjectKind
from pacs.security.tables import UserAccount

FIRST_ADMIN = "admin"
"""The account created on the first start of an archive without an administrator."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_ROLE_NAMES = frozenset(role.value for role in Role)
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))  # verified when the name is unknown


@dataclass(frozen=True, slots=True)
class Account:
    """A local account as the CLI and the login see it (no password hash)."""

    name: str
    roles: frozenset[Role]
    organisation: str
    practitioner: str
    patient: str
    disabled: bool
    created: datetime

    def subject(self, client_address: str = "") -> Subject:
        """The subject this account acts as. A system account holds ``system/*.cruds``:
        local accounts carry no scopes of their own, so the role's grants decide (an OIDC
        client's token narrows it with its scopes)."""
        system = self.roles == {Role.SYSTEM}
        return Subject(
            name=self.name,
            kind=SubjectKind.SYSTEM if system else SubjectKind.USER,
            roles=self.roles,
            organisation=self.organisation,
            practitioner=self.practitioner,
            patient=self.patient,
            scopes=SYSTEM_ACCOUNT_SCOPES if system else frozenset(),
            client_address=client_address,
        )


SYSTEM_ACCOUNT_SCOPES = frozenset({"system/*.cruds"})
"""The SMART scopes of a local system account's tokens."""


def parse_roles(names: list[str] | tuple[str, ...]) -> frozenset[Role]:
    """Role names -> roles; AccountError naming an unknown one."""
    try:
        roles = frozenset(Role(name.strip().lower()) for name in names)
    except ValueError:
        valid = ", ".join(role.value for role in Role)
        raise AccountError(f"unknown role in {list(names)}: choose from {valid}") from None
    if not roles:
        raise AccountError("an account needs at least one role")
    return roles


def generate_password() -> str:
    """A random password (144 bits) for an account added without one."""
    return secrets.token_urlsafe(18)


def add_account(
    session: Session,
    name: str,
    roles: frozenset[Role],
    password: str,
    organisation: str = "",
    practitioner: str = "",
    patient: str = "",
) -> Account:
    """Add an account and commit; AccountError on a bad or taken name, a short password or a
    patient account without its patient identifier."""
    if not _NAME.fullmatch(name):
        raise AccountError(
            f"invalid account name {name!r}: 1-64 letters, digits or . _ @ -, "
            "starting with a letter or digit"
        )
    if len(password) < 8:
        raise AccountError("the password must have at least 8 characters")
    if Role.PATIENT in roles and not patient:
        raise AccountError("a patient account needs --patient (the patient identifier)")
    if session.scalar(select(UserAccount.pk).where(UserAccount.name == name)) is not None:
        raise AccountError(f"account {name!r} exists")
    row = UserAccount(
        name=name,
        roles=",".join(sorted(roles)),
        organisation=organisation,
        practitioner=practitioner,
        patient=patient,
        password_hash=_HASHER.hash(password),
        disabled=False,
    )
    session.add(row)
    session.commit()
    return _account(row)


def find_account(session: Session, name: str) -> Account | None:
    """The account called ``name``, or None."""
    row = session.scalar(select(UserAccount).where(UserAccount.name == name))
    return None if row is None else _account(row)


def list_accounts(session: Session) -> list[Account]:
    """Every account, by name."""
    return [_account(row) for row in session.scalars(select(UserAccount).order_by("name"))]


def disable_account(session: Session, name: str) -> Account:
    """Disable an account (its tokens and sessions stop working at once) and commit;
    AccountError if there is none called ``name``."""
    row = session.scalar(select(UserAccount).where(UserAccount.name == name))
    if row is None:
        raise AccountError(f"no account {name!r}")
    row.disabled = True
    session.commit()
    return _account(row)


def authenticate(session: Session, name: str, password: str) -> Account | None:
    """The enabled account ``name`` if ``password`` is its password; None otherwise (an
    unknown name costs the same hash verification as a wrong password)."""
    row = session.scalar(select(UserAccount).where(UserAccount.name == name))
    try:
        _HASHER.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerifyMismatchError, InvalidHashError):
        return None
    if row is None or row.disabled:
        return None
    return _account(row)


def ensure_first_admin(session: Session) -> str | None:
    """On an archive without any administrator account, add ``admin`` with a random password
    and return that password (to be shown once); None when an administrator exists (or
    another node of the archive is creating it)."""
    if any(Role.ADMIN in _roles(row.roles) for row in session.scalars(select(UserAccount))):
        return None
    password = generate_password()
    try:
        add_account(session, FIRST_ADMIN, frozenset({Role.ADMIN}), password)
    except IntegrityError:  # another node of the archive created it at the same moment
        session.rollback()
        return None
    return password


def _roles(text: str) -> frozenset[Role]:
    return frozenset(Role(name) for name in text.split(",") if name in _ROLE_NAMES)


def _account(row: UserAccount) -> Account:
    return Account(
        name=row.name,
        roles=_roles(row.roles),
        organisation=row.organisation,
        practitioner=row.practitioner,
        patient=row.patient,
        disabled=row.disabled,
        created=as_utc(row.created),
    )

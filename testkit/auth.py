"""Credentials for tests: local accounts and the bearer tokens ``pacs token`` prints."""

from __future__ import annotations

from pacs.aes import migrated_session
from pacs.config import Settings
from pacs.security.accounts import add_account, find_account, generate_password, parse_roles
from pacs.security.authn import account_token


def local_token(
    settings: Settings,
    name: str,
    role: str,
    organisation: str = "",
    patient: str = "",
    practitioner: str = "",
    ttl: int | None = None,
) -> str:
    """A bearer token for local account ``name`` (added with ``role`` and the given identity
    if it does not exist), issued by the same code as ``pacs token``."""
    with migrated_session(settings) as session:
        if find_account(session, name) is None:
            roles = parse_roles([part for part in role.split(",") if part])
            password = generate_password()
            add_account(session, name, roles, password, organisation, practitioner, patient)
        return account_token(settings, session, name, ttl)


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}

"""Credentials for tests: local accounts and the bearer tokens ``pacs token`` prints."""

from __future__ import annotations

from dataclasses import replace

from pacs.aes import migrated_session
from pacs.config import Settings
from pacs.security.accounts import add_account, find_account, generate_password, parse_roles
from pacs.security.authn import account_token
from pacs.security.tokens import LocalTokens


def local_token(
    settings: Settings,
    name: str,
    role: str,
    organisation: str = "",
    patient: str = "",
    practitioner: str = "",
    ttl: int | None = None,
    scopes: frozenset[str] = frozenset(),
) -> str:
    """A bearer token for local account ``name`` (added with ``role`` and the given identity
    if it does not exist), issued by the same code as ``pacs token``. With ``scopes``, the
    token carries those SMART scopes (as a client-credentials token of the issuer would;
    ``pacs token`` issues none), signed by the same key."""
    with migrated_session(settings) as session:
        account = find_account(session, name)
        if account is None:
            roles = parse_roles([part for part in role.split(",") if part])
            password = generate_password()
            add_account(session, name, roles, password, organisation, practitioner, patient)
            account = find_account(session, name)
        if not scopes or account is None:
            return account_token(settings, session, name, ttl)
    tokens = LocalTokens.at(settings.resolved_signing_key_file)
    subject = replace(account.subject(), scopes=scopes)
    return tokens.issue(subject, ttl or settings.token_ttl_seconds)


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}

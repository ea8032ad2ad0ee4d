"""Authentication of an HTTP request: the one place that turns credentials into a
:class:`~pacs.security.subject.Subject` (``viewer_api.deps.get_current_user`` calls it).

- ``Authorization: Bearer <token>``: a token this archive signed (``pacs token``, the local
  login) in every mode; a token of the OIDC issuer under ``PACS_AUTH=oidc``.
- the ``pacs_session`` cookie: a session this archive signed at the web login (local or OIDC).
- nothing: NotAuthenticated, except under ``PACS_AUTH=none`` (loopback only), where the caller
  is the local administrator; credentials presented there are still checked and used.

A token of a local account holds only while the account exists and is not disabled."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from pacs.config import AuthMode, Settings
from pacs.security.accounts import authenticate, ensure_first_admin, find_account
from pacs.security.errors import AccountError, NotAuthenticated
from pacs.security.oidc import OidcProvider
from pacs.security.subject import LOCAL_ADMIN, Subject
from pacs.security.tokens import LOCAL_ISSUER, LocalTokens, unverified_issuer

SESSION_COOKIE = "pacs_session"
"""The web session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS)."""


def account_token(settings: Settings, session: Session, name: str, ttl: int | None = None) -> str:
    """A bearer token for local account ``name`` (``pacs token``); AccountError if there is
    no such account or it is disabled."""
    account = find_account(session, name)
    if account is None or account.disabled:
        raise AccountError(f"no enabled account {name!r} (see pacs users list)")
    tokens = LocalTokens.at(settings.resolved_signing_key_file)
    return tokens.issue(account.subject(), ttl or settings.token_ttl_seconds)


def first_start(settings: Settings, session: Session) -> str | None:
    """Under ``PACS_AUTH=local``, the notice of the administrator created on an archive
    without one (its random password, to print once on the console); None otherwise."""
    if settings.auth is not AuthMode.LOCAL:
        return None
    try:
        password = ensure_first_admin(session)
    except AccountError:  # an account called 'admin' exists without the role
        return "No administrator account: add one with pacs users add NAME --role admin"
    if password is None:
        return None
    return (
        f"First start: created the administrator account 'admin' with password {password}\n"
        "  (shown only this once; log in at /login, or get a token: pacs token --user admin)"
    )


class Authenticator:
    """The credentials checks of one app: the archive's own tokens, the OIDC issuer (if
    configured) and the local accounts."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.tokens = LocalTokens.at(settings.resolved_signing_key_file)
        self.oidc = OidcProvider(settings) if settings.auth is AuthMode.OIDC else None
        self._sessions = sessions

    def authenticate(
        self, authorization: str | None, session_cookie: str | None, client_address: str = ""
    ) -> Subject:
        """The subject of the request's credentials; NotAuthenticated if there are none (and
        the mode is not ``none``) or they do not hold."""
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise NotAuthenticated("the Authorization header must be 'Bearer <token>'")
            return self.bearer(token.strip(), client_address)
        if session_cookie:
            return self.local(session_cookie, client_address)
        if self.settings.auth is AuthMode.NONE:
            return LOCAL_ADMIN
        raise NotAuthenticated("no credentials: send 'Authorization: Bearer <token>' or log in")

    def bearer(self, token: str, client_address: str = "") -> Subject:
        """A bearer token: the archive's own, or (``PACS_AUTH=oidc``) the issuer's."""
        if self.oidc is not None and unverified_issuer(token) != LOCAL_ISSUER:
            return self.oidc.authenticate(token, client_address)
        return self.local(token, client_address)

    def local(self, token: str, client_address: str = "") -> Subject:
        """A token or session this archive signed; a local account's must still be enabled."""
        subject, provider = self.tokens.validate(token, client_address)
        if provider == "local":
            with self._sessions() as session:
                account = find_account(session, subject.name)
            if account is None or account.disabled:
                raise NotAuthenticated(f"account {subject.name!r} is disabled or removed")
        return subject

    def login(self, name: str, password: str, client_address: str = "") -> Subject | None:
        """The subject of a local account whose password this is; None otherwise."""
        with self._sessions() as session:
            account = authenticate(session, name, password)
        return None if account is None else account.subject(client_address)

    def session_token(self, subject: Subject, provider: str) -> str:
        """The ``pacs_session`` cookie value for ``subject`` (who logged in with
        ``provider``: 'local' or 'oidc')."""
        return self.tokens.issue(subject, self.settings.session_ttl_seconds, provider)

    def access_token(self, subject: Subject) -> str:
        """A bearer token for a local account (``pacs token``, ``/login/token``)."""
        return self.tokens.issue(subject, self.settings.token_ttl_seconds)

"""The web login through the OIDC issuer: authorization-code flow with PKCE (RFC 7636, S256).

``start`` makes a fresh ``state``, ``nonce`` and code verifier, keeps them in a short-lived
cookie the archive signs (``pacs_login``, bound to this browser) and answers the issuer's
authorize URL; ``finish`` checks the returned ``state`` against that cookie, exchanges the code
with the verifier at the token endpoint, validates the ID token (signature, ``iss``, ``aud`` =
the web client, ``exp``, ``nonce``) and answers the subject the session is opened for."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

from pacs.security.errors import NotAuthenticated
from pacs.security.oidc import OidcProvider
from pacs.security.subject import Subject
from pacs.security.tokens import LocalTokens

LOGIN_COOKIE = "pacs_login"
LOGIN_AUDIENCE = "urn:pacs:login"
LOGIN_TTL_SECONDS = 600
"""How long a started login may take at the issuer."""


def safe_next(path: str | None) -> str:
    """Where to go after the login: a path on this site only (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def code_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` of a PKCE code verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class LoginStart:
    """Where to send the browser, and the cookie that remembers this login."""

    authorize_url: str
    cookie: str


def start(
    provider: OidcProvider, tokens: LocalTokens, redirect_uri: str, next_path: str
) -> LoginStart:
    """Begin a login: the issuer's authorize URL (code flow, PKCE S256, state, nonce)."""
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    query = urlencode(
        {
            "response_type": "code",
            "client_id": provider.settings.oidc_web_client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    cookie = tokens.sign(
        {"state": state, "nonce": nonce, "verifier": verifier, "next": safe_next(next_path)},
        LOGIN_TTL_SECONDS,
        LOGIN_AUDIENCE,
    )
    endpoint = str(provider.metadata()["authorization_endpoint"])
    return LoginStart(f"{endpoint}?{query}", cookie)


def finish(
    provider: OidcProvider,
    tokens: LocalTokens,
    code: str,
    state: str,
    cookie: str | None,
    redirect_uri: str,
    client_address: str = "",
) -> tuple[Subject, str]:
    """Complete a login: the subject of the ID token and the path to return to;
    NotAuthenticated if the state, the code or the token does not hold."""
    if not cookie:
        raise NotAuthenticated("no login in progress (the login cookie is missing)")
    started = tokens.open(cookie, LOGIN_AUDIENCE)
    if not hmac.compare_digest(str(started.get("state", "")), state):
        raise NotAuthenticated("the login state does not match")
    response = provider.exchange_code(code, str(started["verifier"]), redirect_uri)
    claims = provider.claims(response["id_token"], provider.settings.oidc_web_client_id)
    if not hmac.compare_digest(str(claims.get("nonce", "")), str(started["nonce"])):
        raise NotAuthenticated("the ID token's nonce does not match the login")
    return provider.subject(claims, client_address), safe_next(str(started.get("next")))

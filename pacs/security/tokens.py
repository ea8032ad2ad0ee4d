"""Tokens the archive signs itself: bearer tokens (``pacs token``, the local login) and web
sessions (the ``pacs_session`` cookie, also after an OIDC login).

A token is a JWT signed with the archive's ES256 key, kept as a JWK file (mode 0600) under
``data_dir`` and created once, atomically, by whichever process needs it first. Validation
pins the algorithm (ES256 only: ``none``, HMAC or another key type are refused before the
signature is looked at) and checks ``iss``, ``aud``, ``exp``, ``nbf`` and the signature."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from pacs.security.errors import NotAuthenticated
from pacs.security.subject import Role, Subject, SubjectKind

LOCAL_ISSUER = "urn:pacs:local"
"""``iss`` of the archive's own tokens (an OIDC issuer is a URL, so they never collide)."""
LOCAL_AUDIENCE = "urn:pacs:api"
"""``aud`` of the archive's own tokens."""
ALGORITHM = "ES256"
LEEWAY_SECONDS = 30
"""Clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (local and OIDC tokens)."""


def load_signing_key(path: Path) -> ECKey:
    """The archive's signing key at ``path``, created (P-256, file mode 0600) if missing. Two
    processes starting at once agree on one key: it is written to a temporary file and linked
    into place, which fails for the second."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ECKey.generate_key("P-256", private=True, auto_kid=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                json.dump(key.as_dict(private=True), file)
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(temporary, path)
        finally:
            temporary.unlink()
    return ECKey.import_key(json.loads(path.read_text()))


def header_of(token: str) -> dict[str, Any]:
    """The unverified JOSE header of a compact JWS; NotAuthenticated if it is not one."""
    try:
        return dict(jws.extract_compact(token.encode()).protected)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise NotAuthenticated(f"malformed token: {exc}") from None


def unverified_issuer(token: str) -> str:
    """The ``iss`` a token claims (to choose its validator; nothing is trusted from it)."""
    try:
        payload = jws.extract_compact(token.encode()).payload
        issuer = json.loads(payload).get("iss", "")
    except (JoseError, ValueError, UnicodeError, AttributeError) as exc:
        raise NotAuthenticated(f"malformed token: {exc}") from None
    return issuer if isinstance(issuer, str) else ""


def validate_claims(claims: dict[str, Any], issuer: str, audience: str) -> None:
    """``iss``, ``aud``, ``exp`` (required), ``nbf`` and ``iat`` (if present) with the
    leeway; NotAuthenticated naming the claim that fails."""
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise NotAuthenticated(f"token rejected: {exc}") from None


def verify(token: str, key: ECKey | Any, algorithms: tuple[str, ...]) -> dict[str, Any]:
    """The claims of ``token`` if its header names one of the pinned ``algorithms`` and its
    signature verifies with ``key``; NotAuthenticated otherwise."""
    algorithm = header_of(token).get("alg")
    if algorithm not in algorithms:
        raise NotAuthenticated(f"token algorithm {algorithm!r} is not accepted")
    try:
        return dict(jwt.decode(token, key, algorithms=list(algorithms)).claims)
    except JoseError as exc:
        raise NotAuthenticated(f"token signature rejected: {exc}") from None


@dataclass(frozen=True, slots=True)
class LocalTokens:
    """Issues and validates the archive's own tokens with one signing key."""

    key: ECKey

    @classmethod
    def at(cls, path: Path) -> LocalTokens:
        """The tokens of the key at ``path`` (created if missing)."""
        return cls(load_signing_key(path))

    def sign(self, claims: dict[str, Any], ttl_seconds: int, audience: str) -> str:
        """``claims`` as a token of this archive for ``audience``, valid ``ttl_seconds``."""
        now = int(time.time())
        registered = {"iss": LOCAL_ISSUER, "aud": audience, "iat": now, "nbf": now}
        claims = {**claims, **registered, "exp": now + ttl_seconds}
        header = {"alg": ALGORITHM, "kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[ALGORITHM])

    def open(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this archive signed for ``audience``; NotAuthenticated if
        it does not hold."""
        claims = verify(token, self.key, (ALGORITHM,))
        validate_claims(claims, LOCAL_ISSUER, audience)
        return claims

    def issue(self, subject: Subject, ttl_seconds: int, provider: str = "local") -> str:
        """A bearer token (or session) for ``subject`` valid ``ttl_seconds`` from now;
        ``provider`` records who authenticated the subject ('local' account or 'oidc')."""
        claims = {
            "sub": subject.name,
            "jti": secrets.token_urlsafe(12),
            "roles": sorted(subject.roles),
            "kind": subject.kind.value,
            "organisation": subject.organisation,
            "practitioner": subject.practitioner,
            "patient": subject.patient,
            "scope": " ".join(sorted(subject.scopes)),
            "reads_for": sorted(subject.reads_for),
            "idp": provider,
        }
        return self.sign(claims, ttl_seconds, LOCAL_AUDIENCE)

    def validate(self, token: str, client_address: str = "") -> tuple[Subject, str]:
        """The subject of a token this archive signed, and who authenticated it ('local' or
        'oidc'); NotAuthenticated if it does not hold."""
        claims = self.open(token, LOCAL_AUDIENCE)
        roles = frozenset(Role(name) for name in claims.get("roles", []) if name in _ROLE_NAMES)
        kind = claims.get("kind")
        subject = Subject(
            name=str(claims.get("sub", "")),
            kind=SubjectKind(kind) if kind in _KIND_NAMES else SubjectKind.USER,
            roles=roles,
            organisation=str(claims.get("organisation", "")),
            practitioner=str(claims.get("practitioner", "")),
            patient=str(claims.get("patient", "")),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            client_address=client_address,
            reads_for=frozenset(str(o) for o in claims.get("reads_for", ()) if o),
        )
        return subject, str(claims.get("idp", "local"))


_ROLE_NAMES = frozenset(role.value for role in Role)
_KIND_NAMES = frozenset(kind.value for kind in SubjectKind)

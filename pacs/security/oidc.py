"""Bearer JWTs of an OpenID Connect provider (``PACS_AUTH=oidc``; Keycloak in compose).

The issuer's discovery document (``/.well-known/openid-configuration``) names its key set
(``jwks_uri``); both are cached ``PACS_OIDC_JWKS_CACHE_SECONDS``. A token signed with a key id
the cache does not hold makes one refetch (the provider rotated its keys), at most one every
``PACS_OIDC_JWKS_MIN_REFRESH_SECONDS``, so that forged key ids cannot make the archive hammer
the provider. A token is accepted only with a pinned algorithm (``PACS_OIDC_ALGORITHMS``,
never ``none``), a valid signature, the configured ``iss`` and ``aud`` and a current
``exp``/``nbf``; its roles, organisation, practitioner and patient come from the configured
claims."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from pacs.config import Settings
from pacs.security.errors import IdentityProviderUnavailable, NotAuthenticated
from pacs.security.subject import Role, Subject, SubjectKind
from pacs.security.tokens import header_of, validate_claims, verify

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 10.0
DISCOVERY = ".well-known/openid-configuration"
_ROLE_NAMES = frozenset(role.value for role in Role)


class OidcProvider:
    """One OIDC issuer: its endpoints, its keys (cached, refreshed on rotation) and the
    validation of its tokens. Thread-safe; one per app."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.issuer = settings.oidc_issuer
        self._http = http or httpx.Client(timeout=HTTP_TIMEOUT_SECONDS)
        self._clock = clock
        self._lock = threading.Lock()
        self._discovery: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = -float("inf")

    # ------------------------------------------------------------------ metadata and keys

    def metadata(self) -> dict[str, Any]:
        """The issuer's discovery document (cached)."""
        with self._lock:
            if self._discovery is None or self._stale():
                self._refresh()
            assert self._discovery is not None
            return self._discovery

    @property
    def _min_refresh(self) -> float:
        return self.settings.oidc_jwks_min_refresh_seconds

    def _stale(self) -> bool:
        return self._clock() - self._fetched_at >= self.settings.oidc_jwks_cache_seconds

    def _key(self, kid: str | None) -> Any:
        """The provider's key ``kid``; one refetch (rate-limited) if the cache lacks it."""
        with self._lock:
            if self._keys is None and self._clock() - self._fetched_at < self._min_refresh:
                raise IdentityProviderUnavailable("OIDC issuer unreachable (retrying shortly)")
            if self._keys is None or self._stale():
                self._refresh()
            key = self._find(kid)
            if key is None and self._clock() - self._fetched_at >= self._min_refresh:
                log.info("OIDC key id %r unknown: refetching the issuer's key set", kid)
                self._refresh()
                key = self._find(kid)
        if key is None:
            raise NotAuthenticated(f"token signed with an unknown key id {kid!r}")
        return key

    def _find(self, kid: str | None) -> Any:
        keys = self._keys.keys if self._keys is not None else []
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        return next((key for key in keys if key.kid == kid), None)

    def _refresh(self) -> None:
        """Fetch the discovery document and the key set; on failure keep what was cached
        (IdentityProviderUnavailable if nothing was)."""
        try:
            discovery = self._get_json(f"{self.issuer.rstrip('/')}/{DISCOVERY}")
            if discovery.get("issuer") != self.issuer:
                raise IdentityProviderUnavailable(
                    f"the discovery document names issuer {discovery.get('issuer')!r}, "
                    f"not PACS_OIDC_ISSUER {self.issuer!r}"
                )
            jwks = self._get_json(str(discovery["jwks_uri"]))
            keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except (IdentityProviderUnavailable, KeyError, ValueError, JoseError) as exc:
            self._fetched_at = self._clock()  # rate-limits the retries too
            if self._keys is None:
                raise IdentityProviderUnavailable(f"OIDC issuer unusable: {exc}") from None
            log.warning("OIDC issuer refresh failed, keeping the cached keys: %s", exc)
            return
        self._discovery, self._keys, self._fetched_at = discovery, keys, self._clock()

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = self._http.get(url)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IdentityProviderUnavailable(f"{url}: {exc}") from None
        if not isinstance(body, dict):
            raise IdentityProviderUnavailable(f"{url}: not a JSON object")
        return body

    # ------------------------------------------------------------------ tokens

    def claims(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token of this issuer for ``audience``; NotAuthenticated if it
        does not hold (the algorithm is checked before any key is fetched)."""
        header = header_of(token)
        if header.get("alg") not in self.settings.oidc_algorithms:
            raise NotAuthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
        key = self._key(header.get("kid"))
        claims = verify(token, key, self.settings.oidc_algorithms)
        validate_claims(claims, self.issuer, audience)
        return claims

    def subject(self, claims: dict[str, Any], client_address: str = "") -> Subject:
        """The subject the claims describe, through the configured claim names."""
        s = self.settings
        names = _strings(claim(claims, s.oidc_roles_claim))
        roles = frozenset(Role(name) for name in names if name in _ROLE_NAMES)
        scopes = _strings(claims.get("scope", claims.get("scp")))
        name = _first(claim(claims, s.oidc_name_claim)) or str(claims.get("sub", ""))
        return Subject(
            name=name,
            kind=SubjectKind.SYSTEM if Role.SYSTEM in roles else SubjectKind.USER,
            roles=roles,
            organisation=_first(claim(claims, s.oidc_organisation_claim)),
            practitioner=_first(claim(claims, s.oidc_practitioner_claim)),
            patient=_first(claim(claims, s.oidc_patient_claim)),
            scopes=frozenset(scopes),
            client_address=client_address,
            reads_for=self._reads_for(claims, roles),
        )

    def _reads_for(self, claims: dict[str, Any], roles: frozenset[Role]) -> frozenset[str]:
        """The organisations a radiologist reads for, from ``PACS_OIDC_READS_FOR_CLAIM`` (off
        when empty; ignored for other roles)."""
        path = self.settings.oidc_reads_for_claim
        if not path or Role.RADIOLOGIST not in roles:
            return frozenset()
        return frozenset(_strings(claim(claims, path)))

    def exchange_code(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        """The token response for an authorization code of the web client (PKCE
        ``code_verifier``); NotAuthenticated if the provider refuses it."""
        endpoint = str(self.metadata()["token_endpoint"])
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.settings.oidc_web_client_id,
            "code_verifier": verifier,
        }
        try:
            response = self._http.post(endpoint, data=form)
        except httpx.HTTPError as exc:
            raise IdentityProviderUnavailable(f"{endpoint}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            raise NotAuthenticated(f"the issuer refused the code: {response.status_code} {body}")
        if not isinstance(body.get("id_token"), str):
            raise NotAuthenticated("the issuer's token response has no id_token")
        return dict(body)

    def authenticate(self, token: str, client_address: str = "") -> Subject:
        """The subject of a bearer token for the API (``aud`` = ``PACS_OIDC_AUDIENCE``)."""
        return self.subject(self.claims(token, self.settings.oidc_audience), client_address)


def claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``); None where it is missing."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    """A claim as a list of strings: a JSON array, or a space/comma-separated string."""
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _first(value: Any) -> str:
    """A single-valued claim (the first of an array)."""
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""

"""SMART App Launch discovery for ``/fhir``: ``.well-known/smart-configuration`` and the
CapabilityStatement's ``rest.security`` element.

Under ``PACS_AUTH=oidc`` the endpoints are the issuer's; under ``local`` they are the
archive's own login page and token endpoint. The scopes a token carries (``scope`` claim) are
kept on the :class:`~pacs.security.subject.Subject`; the access policy enforces them."""

from __future__ import annotations

from typing import Any

SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "patient/*.rs",
    "user/*.rs",
    "user/*.cruds",
    "system/*.rs",
)
LOCAL_CAPABILITIES = ("permission-patient", "permission-user", "permission-v2")
"""What the embedded default offers: the archive's login and a password token endpoint."""
CAPABILITIES = (
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "sso-openid-connect",
    "context-standalone-patient",
    "permission-patient",
    "permission-user",
    "permission-v2",
)
SMART_SERVICE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
            "display": "SMART-on-FHIR",
        }
    ],
    "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
}
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def smart_configuration(
    issuer: str,
    authorization_endpoint: str,
    token_endpoint: str,
    capabilities: tuple[str, ...] = CAPABILITIES,
    **endpoints: str,
) -> dict[str, Any]:
    """The ``.well-known/smart-configuration`` document (SMART App Launch 2.x); ``endpoints``
    adds optional ones (``jwks_uri``, ``introspection_endpoint``, ...) that are set."""
    return {
        "issuer": issuer,
        "authorization_endpoint": authorization_endpoint,
        "token_endpoint": token_endpoint,
        **{name: url for name, url in endpoints.items() if url},
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "capabilities": list(capabilities),
        "code_challenge_methods_supported": ["S256"],
    }


def capability_security(configuration: dict[str, Any]) -> dict[str, Any]:
    """The CapabilityStatement ``rest[0].security`` element for a SMART configuration."""
    uris = [
        {"url": "authorize", "valueUri": configuration["authorization_endpoint"]},
        {"url": "token", "valueUri": configuration["token_endpoint"]},
    ]
    return {
        "cors": True,
        "service": [SMART_SERVICE],
        "description": "Bearer tokens (OAuth 2 / OpenID Connect, SMART on FHIR scopes); "
        "see .well-known/smart-configuration.",
        "extension": [{"url": OAUTH_URIS, "extension": uris}],
    }

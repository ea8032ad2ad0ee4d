"""The errors of the identity feature."""

from __future__ import annotations

from pacs.errors import PacsError


class SecurityError(PacsError):
    """Base class of the identity and access errors."""


class AccountError(SecurityError, ValueError):
    """A local account cannot be added, found or changed (the message says why)."""


class NotAuthenticated(SecurityError):
    """The caller presented no credentials, or credentials that do not hold (expired, wrong
    audience or issuer, bad signature, unpinned algorithm, unknown key, disabled account).
    The message says which, for the log and the ``WWW-Authenticate`` header; never a secret."""


class IdentityProviderUnavailable(SecurityError):
    """The OIDC issuer's discovery document or key set cannot be fetched."""

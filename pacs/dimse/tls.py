"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles): the contexts of the TLS port and of the
archive's TLS associations to remote AEs, and the check that a calling AE title belongs to the
certificate its client presented.

TLS 1.2 is the minimum in both directions. The listener presents ``dicom_tls_certificate``;
with ``dicom_tls_client_ca`` every client must present a certificate issued by that CA
(mutual TLS), and remote SCPs the archive sends to are verified against the same bundle.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from pacs.config import Settings


def server_context(settings: Settings) -> ssl.SSLContext:
    """The context of the DICOM TLS listener (certificate and key must be set)."""
    if settings.dicom_tls_certificate is None or settings.dicom_tls_key is None:
        raise ValueError("DICOM TLS needs dicom_tls_certificate and dicom_tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.dicom_tls_certificate, settings.dicom_tls_key)
    if settings.dicom_tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.dicom_tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context of an association to a TLS peer: its certificate verified against
    ``dicom_tls_client_ca`` (else the system's CAs) and its host name; the archive's own
    certificate presented when it has one."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(settings.dicom_tls_client_ca) if settings.dicom_tls_client_ca else None,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.dicom_tls_certificate is not None and settings.dicom_tls_key is not None:
        context.load_cert_chain(settings.dicom_tls_certificate, settings.dicom_tls_key)
    return context


TlsArgs = tuple[ssl.SSLContext, str]
"""pynetdicom's ``tls_args``: the client context and the server host name to verify."""


def peer_tls_args(settings: Settings, title: str, host: str) -> TlsArgs | None:
    """``tls_args`` for an association to the remote AE ``title`` at ``host``: TLS when the
    title is in ``dicom_tls_peers``, else None (plain TCP)."""
    if title.strip() not in settings.dicom_tls_peers:
        return None
    return client_context(settings), host


def certificate_names(certificate: Mapping[str, Any]) -> set[str]:
    """The subject common names and DNS subject-alternative names of a peer certificate (as
    ``ssl.SSLSocket.getpeercert()`` returns it)."""
    names = {
        str(value)
        for rdn in certificate.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    }
    names.update(
        str(value) for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"
    )
    return names


def ae_matches_certificate(
    title: str, certificate: Mapping[str, Any] | None, mapping: Mapping[str, str]
) -> bool:
    """Whether the calling AE ``title`` belongs to ``certificate``: its CN or a DNS SAN is
    the title itself, or the name ``mapping`` gives for the title."""
    if not certificate:
        return False
    title = title.strip()
    names = certificate_names(certificate)
    return title in names or mapping.get(title, "\0") in names

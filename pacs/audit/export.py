"""Export of audit records as RFC 5424 syslog messages (IHE ATNA), each message the
record's FHIR AuditEvent JSON: ``udp://host:514`` (RFC 5426, one datagram each),
``tcp://host:port`` (RFC 6587 octet counting) or ``tls://host:6514`` (RFC 5425).

Export never fails an access: a message that cannot be sent is logged (without its content)
and dropped; the audit table stays the record of truth.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pacs.audit.resource import audit_event
from pacs.errors import PacsError

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10  # security/authorization messages
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
APP_NAME = "pacs"
MSG_ID = "AuditEvent"  # the message is FHIR AuditEvent JSON (not DICOM PS3.15 XML)


class ExportError(PacsError, ValueError):
    """The syslog URL is not usable."""


def syslog_message(event: Mapping[Any, Any], hostname: str = "") -> bytes:
    """One RFC 5424 message: header, no structured data, the AuditEvent JSON as MSG."""
    severity = SEVERITY_NOTICE if event.get("outcome") == "0" else SEVERITY_WARNING
    priority = FACILITY_AUTHPRIV * 8 + severity
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255]
    header = f"<{priority}>1 {timestamp} {host} {APP_NAME} {os.getpid()} {MSG_ID} -"
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"{header} {body}".encode()


class SyslogExporter:
    """Sends audit rows to one syslog collector (thread-safe; one connection kept for
    TCP/TLS, reopened after a failure)."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname:
            raise ExportError(f"audit syslog URL must be udp://, tcp:// or tls://host:port: {url}")
        self.scheme = parts.scheme
        self.address = (parts.hostname, parts.port or (6514 if parts.scheme == "tls" else 514))
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def send(self, row: Mapping[Any, Any]) -> None:
        """Send the AuditEvent of ``row``; never raises."""
        message = syslog_message(audit_event(row))
        with self._lock:
            try:
                self._send(message)
            except OSError as exc:
                log.warning("audit export to %s failed: %s", self.address[0], type(exc).__name__)
                self.close()

    def _send(self, message: bytes) -> None:
        if self.scheme == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self.address)
            return
        if self._sock is None:
            sock = socket.create_connection(self.address, timeout=self.timeout)
            if self.scheme == "tls":
                sock = ssl.create_default_context().wrap_socket(
                    sock, server_hostname=self.address[0]
                )
            self._sock = sock
        self._sock.sendall(f"{len(message)} ".encode() + message)

    def close(self) -> None:
        """Close the TCP/TLS connection, if any."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_exporter: SyslogExporter | None = None


def install(url: str) -> None:
    """Export every audit row this process writes to ``url`` ('' = no export); called by
    the process's composition root from ``PACS_AUDIT_SYSLOG_URL``."""
    global _exporter
    if _exporter is not None:
        _exporter.close()
    _exporter = SyslogExporter(url) if url else None


def installed() -> bool:
    """Whether export is installed in this process."""
    return _exporter is not None


def emit(row: Mapping[Any, Any]) -> None:
    """Export one committed row, when export is installed."""
    if _exporter is not None:
        _exporter.send(row)

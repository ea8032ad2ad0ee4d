"""Outbound-request guard (SSRF): which addresses the archive may send HTTP requests to.

A URL a user registers (a webhook receiver) must not turn the archive into a client of its
own internal network: loopback, link-local (cloud metadata at 169.254.169.254), private,
unique-local, unspecified, multicast and reserved addresses, and the archive's own address,
are refused unless an administrator allow-listed their network (``webhook_allowed_networks``).
The check runs when the URL is registered and again on every connection: ``GuardedBackend``
resolves the host, checks every address and connects to the address it checked (resolve, then
pin), so a DNS answer that changes after registration (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import typing
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import httpcore
import httpx

from pacs.config import IPNetwork, Settings
from pacs.errors import PacsError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")


class ForbiddenDestination(PacsError, ValueError):
    """A URL whose scheme or resolved address the archive refuses to send to."""


def _kind(address: IPAddress) -> str:
    """Why ``address`` is internal ('' when it is a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _kind(address.ipv4_mapped)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    return next((name for name, hit in checks if hit), "")


class DestinationGuard:
    """Refuses internal addresses and ``own`` addresses outside the ``allowed`` networks."""

    def __init__(self, allowed: Iterable[IPNetwork] = (), own: Iterable[str] = ()) -> None:
        self.allowed = tuple(allowed)
        self.own = frozenset(ipaddress.ip_address(a) for a in own)

    def refusal(self, address: IPAddress) -> str:
        """Why a connection to ``address`` is refused ('' when it is allowed)."""
        if any(address in network for network in self.allowed):
            return ""
        kind = _kind(address)
        if kind:
            return f"{address} is a {kind} address"
        return f"{address} is the archive's own address" if address in self.own else ""

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address ``host`` resolves to, all checked; ForbiddenDestination if any is
        refused or the name does not resolve."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ForbiddenDestination(f"host {host!r} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        for text in addresses:
            reason = self.refusal(ipaddress.ip_address(text))
            if reason:
                raise ForbiddenDestination(
                    f"refused destination {host!r}: {reason} (not in webhook_allowed_networks)"
                )
        return addresses

    def check_url(self, url: str) -> None:
        """ForbiddenDestination unless ``url`` is http(s) and its host resolves to allowed
        addresses only."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ForbiddenDestination(f"URL must be an absolute http(s) URL: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ForbiddenDestination(f"URL has an invalid port: {url!r}") from None
        self.resolve(parts.hostname, port)


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's network backend, connecting only to addresses the guard allows: the host
    is resolved and checked here and the connection goes to that checked address (TLS still
    verifies the certificate against the host name)."""

    def __init__(self, guard: DestinationGuard) -> None:
        self.guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.guard.resolve(host, port)
        except ForbiddenDestination as exc:
            raise httpcore.ConnectError(str(exc)) from None
        for address in addresses[:-1]:  # every checked address in turn, as a browser would
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                continue
        return super().connect_tcp(addresses[-1], port, timeout, local_address, socket_options)


def guarded_client(guard: DestinationGuard, timeout: float) -> httpx.Client:
    """An httpx client that connects only where ``guard`` allows, ignores proxy variables
    (a proxy would hide the destination) and follows no redirects."""
    transport = httpx.HTTPTransport(trust_env=False)
    # the public pool class with our network backend; httpx exposes no other hook for it
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl.create_default_context(), network_backend=GuardedBackend(guard)
    )
    return httpx.Client(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )


def settings_guard(settings: Settings) -> DestinationGuard:
    """The guard of ``settings``: its allow-list, and the archive's own addresses (its bind
    address, its public URL's host and this machine's host name) refused."""
    public = urlsplit(settings.public_base_url or "").hostname or ""
    hosts = (settings.host, public, socket.gethostname())
    return DestinationGuard(settings.webhook_allowed_networks, own_addresses(hosts))


def own_addresses(hosts: Sequence[str]) -> list[str]:
    """The addresses ``hosts`` resolve to (unresolvable names are skipped)."""
    found: list[str] = []
    for host in hosts:
        if not host:
            continue
        try:
            infos = socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError):
            continue
        found.extend(str(info[4][0]).split("%")[0] for info in infos)
    return list(dict.fromkeys(found))

"""An SSRF-safe fetcher for ``{"url": ...}`` image inputs.

A URL is fetched only if every address its host resolves to is public (not private,
loopback, link-local, metadata, multicast, reserved, or an IPv4 address hidden inside IPv6),
unless an operator explicitly allows a network. The connection goes to the address that was
checked (no second DNS lookup an attacker could rebind), every redirect is checked again,
and size and time are capped.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from imgclassify.errors import ForbiddenSource, InvalidUrl, PayloadTooLarge, UrlFetchFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Names that reach a cloud metadata server whatever DNS says.
_BLOCKED_HOSTNAMES = {"metadata.google.internal", "metadata", "metadata.goog"}
_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What http.client refuses in a request target (it would raise, not send).
_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv6 one (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses (and their IPv6 wrappings)."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_link_local)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (numeric spellings like ``127.1`` included)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as error:  # ValueError: e.g. a NUL in the name
        raise UrlFetchFailed(f"cannot resolve host {host!r}: {error}") from None
    return sorted({info[4][0] for info in infos})


@dataclass
class UrlPolicy:
    """What the fetcher may reach. Defaults: https only, public addresses only."""

    schemes: tuple[str, ...] = ("https",)
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_bytes: int = 20 * 2**20
    timeout_seconds: float = 10.0
    max_redirects: int = 3

    @classmethod
    def build(cls, schemes: Iterable[str], allowed_networks: Iterable[str], **limits) -> UrlPolicy:
        return cls(tuple(s.lower() for s in schemes),
                   tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks), **limits)

    def address_allowed(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed_networks
               if network.version == address.version):
            return True
        return is_public(address)


@dataclass
class Target:
    """A checked destination: connect to ``address``, speak to ``host``."""

    scheme: str
    host: str
    port: int
    address: str
    path: str


@dataclass
class UrlFetcher:
    policy: UrlPolicy = field(default_factory=UrlPolicy)
    resolver: Resolver = system_resolver

    def check(self, url: str) -> Target:
        """Validate ``url`` and pick the address to connect to; raise 400/403 errors otherwise."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise InvalidUrl(f"invalid URL: {error}") from None
        scheme = parts.scheme.lower()
        if scheme not in self.policy.schemes:
            raise ForbiddenSource(f"URL scheme {scheme or '(none)'!r} is not allowed; use "
                                  f"{' or '.join(self.policy.schemes)}")
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise InvalidUrl("the URL has no host")
        try:
            host = host.encode("idna").decode("ascii")  # the Host header and DNS take ASCII only
        except UnicodeError:
            raise InvalidUrl(f"the URL's host {host[:80]!r} is not a valid domain name") from None
        if parts.username or parts.password:
            raise ForbiddenSource("URLs with credentials are not allowed")
        if host in _BLOCKED_HOSTNAMES or host.endswith(".internal"):
            raise ForbiddenSource(f"host {host!r} is not allowed")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if _UNSENDABLE.search(path) or not path.isascii():
            raise InvalidUrl("the URL's path has spaces, control or non-ASCII characters; percent-encode them")
        port = port or (443 if scheme == "https" else 80)
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
        if not addresses:
            raise UrlFetchFailed(f"host {host!r} has no address")
        refused = [str(a) for a in addresses if not self.policy.address_allowed(a)]
        if refused:
            raise ForbiddenSource(f"host {host!r} resolves to a non-public address ({', '.join(refused)})")
        return Target(scheme, host, port, str(addresses[0]), path)

    def fetch(self, url: str) -> bytes:
        """GET ``url`` (following checked redirects) and return at most ``policy.max_bytes``."""
        deadline = time.monotonic() + self.policy.timeout_seconds
        for _ in range(self.policy.max_redirects + 1):
            target = self.check(url)
            status, location, body = self._get(target, deadline)
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if status != 200:
                raise UrlFetchFailed(f"the URL answered HTTP {status}")
            return body
        raise UrlFetchFailed(f"more than {self.policy.max_redirects} redirects")

    def _get(self, target: Target, deadline: float) -> tuple[int, str | None, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UrlFetchFailed("the URL did not answer in time")
        connection = _pinned_connection(target, remaining)
        try:
            host_header = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
            connection.request("GET", target.path, headers={
                "Host": host_header, "User-Agent": "imgclassify-url-fetcher", "Accept": "image/*"})
            response = connection.getresponse()
            if response.status in _REDIRECTS:
                return response.status, response.getheader("Location"), b""
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
                raise PayloadTooLarge(f"the URL's image has {declared} bytes; the limit is {self.policy.max_bytes}")
            chunks, size = [], 0
            while chunk := response.read(64 * 1024):
                size += len(chunk)
                if size > self.policy.max_bytes:
                    raise PayloadTooLarge(f"the URL's image has more than {self.policy.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise UrlFetchFailed("the URL did not answer in time")
                chunks.append(chunk)
            return response.status, None, b"".join(chunks)
        except (OSError, http.client.HTTPException) as error:
            raise UrlFetchFailed(f"fetching the URL failed: {type(error).__name__}") from None
        finally:
            connection.close()


def _pinned_connection(target: Target, timeout: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection to the checked address, with TLS verified against the host name."""

    class Pinned(http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.create_connection((target.address, target.port), timeout)
            if target.scheme == "https":
                self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=target.host)

    return Pinned(target.host, target.port, timeout=timeout)

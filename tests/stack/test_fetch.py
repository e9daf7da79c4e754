"""The SSRF-safe URL fetcher.

Every test here runs behind a connection guard: any attempt to connect anywhere but
127.0.0.1 is refused and fails the test, so a broken address check fails loudly instead of
sending traffic. Host names are resolved by a stub (numeric spellings by the real
``getaddrinfo`` with AI_NUMERICHOST, which never touches the network).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imgclassify.errors import ForbiddenSource, InvalidRequest, PayloadTooLarge
from imgclassify.serving.url_fetch import UrlFetcher, UrlFetchFailed, UrlPolicy, is_public

STUB_DNS = {
    "images.example": ["93.184.216.34"],
    "evil.example": ["10.0.0.5"],
    "mixed.example": ["93.184.216.34", "192.168.0.10"],
    "rebind.example": ["::ffff:169.254.169.254"],
    "localhost": ["127.0.0.1", "::1"],
}


def stub_resolver(host: str, port: int) -> list[str]:
    if host in STUB_DNS:
        return STUB_DNS[host]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise UrlFetchFailed(f"unknown host {host}") from None
    return [info[4][0] for info in infos]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse, record and fail on any connection to a non-loopback address."""
    violations: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            violations.append(address)
            raise ConnectionRefusedError(f"test guard: connection to {address} refused")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield violations
    assert violations == [], f"the fetcher tried to connect to {violations}"


class Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes, float]] = {}

    def do_GET(self):  # noqa: N802 - http.server's naming
        status, headers, body, delay = self.routes.get(self.path, (404, {}, b"missing", 0))
        time.sleep(delay)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.routes = {}
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Handler.routes
    httpd.shutdown()
    thread.join(timeout=5)


def loopback_fetcher(**limits) -> UrlFetcher:
    """Explicitly allows http to 127.0.0.1 only, as a test configuration would."""
    return UrlFetcher(UrlPolicy.build(["http", "https"], ["127.0.0.1/32"], **limits), stub_resolver)


DEFAULT = UrlFetcher(UrlPolicy(), stub_resolver)


@pytest.mark.parametrize("url", [
    "https://169.254.169.254/computeMetadata/v1/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://metadata/computeMetadata/v1/",
    "https://10.1.2.3/x.jpg",
    "https://172.16.0.1/x.jpg",
    "https://172.31.255.254/x.jpg",
    "https://192.168.1.1/x.jpg",
    "https://127.0.0.1/x.jpg",
    "https://127.1/x.jpg",
    "https://2130706433/x.jpg",
    "https://0x7f000001/x.jpg",
    "https://0177.0.0.1/x.jpg",
    "https://0.0.0.0/x.jpg",
    "https://100.64.0.1/x.jpg",
    "https://[::1]/x.jpg",
    "https://[::ffff:127.0.0.1]/x.jpg",
    "https://[::ffff:169.254.169.254]/x.jpg",
    "https://[::ffff:a00:1]/x.jpg",
    "https://[64:ff9b::7f00:1]/x.jpg",
    "https://[2002:7f00:1::1]/x.jpg",
    "https://[fe80::1]/x.jpg",
    "https://[fc00::1]/x.jpg",
    "https://224.0.0.1/x.jpg",
    "https://evil.example/x.jpg",
    "https://mixed.example/x.jpg",
    "https://rebind.example/x.jpg",
    "https://localhost/x.jpg",
])
def test_private_loopback_link_local_and_metadata_destinations_are_refused(url):
    with pytest.raises(ForbiddenSource) as error:
        DEFAULT.fetch(url)
    assert error.value.status == 403


@pytest.mark.parametrize("url", ["http://images.example/x.jpg", "ftp://images.example/x.jpg",
                                 "file:///etc/passwd", "gopher://images.example/", "//images.example/x"])
def test_only_https_is_allowed_by_default(url):
    with pytest.raises(ForbiddenSource, match="scheme"):
        DEFAULT.check(url)


def test_credentials_in_urls_are_refused():
    with pytest.raises(ForbiddenSource, match="credentials"):
        DEFAULT.check("https://user:pass@images.example/x.jpg")


@pytest.mark.parametrize("url", ["https:///x.jpg", "https://images.example:99999/x.jpg"])
def test_malformed_urls_are_bad_requests(url):
    with pytest.raises(InvalidRequest):
        DEFAULT.check(url)


def test_a_public_host_is_allowed_and_pinned_to_its_checked_address():
    target = DEFAULT.check("https://images.example/cats/1.jpg?size=large")

    assert (target.host, target.address, target.port) == ("images.example", "93.184.216.34", 443)
    assert target.path == "/cats/1.jpg?size=large"


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("10.0.0.1", False), ("169.254.169.254", False),
    ("::ffff:8.8.8.8", True), ("::ffff:10.0.0.1", False), ("fd00::1", False), ("255.255.255.255", False),
])
def test_address_decision(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


def test_an_explicitly_allowed_loopback_server_is_fetched(server):
    base, routes = server
    routes["/cat.jpg"] = (200, {"Content-Type": "image/jpeg"}, b"\xff\xd8 image bytes", 0)

    assert loopback_fetcher().fetch(f"{base}/cat.jpg") == b"\xff\xd8 image bytes"


def test_redirects_are_followed_and_each_one_is_checked(server):
    base, routes = server
    routes["/a"] = (302, {"Location": "/b"}, b"", 0)
    routes["/b"] = (200, {}, b"final", 0)
    routes["/to-private"] = (302, {"Location": "http://10.0.0.1/secret"}, b"", 0)
    routes["/to-metadata"] = (307, {"Location": "http://169.254.169.254/computeMetadata/v1/"}, b"", 0)
    routes["/to-other-loopback"] = (301, {"Location": "http://127.0.0.2/x"}, b"", 0)

    assert loopback_fetcher().fetch(f"{base}/a") == b"final"
    for path in ("/to-private", "/to-metadata", "/to-other-loopback"):
        with pytest.raises(ForbiddenSource):
            loopback_fetcher().fetch(f"{base}{path}")


def test_endless_redirects_stop_at_the_limit(server):
    base, routes = server
    routes["/loop"] = (302, {"Location": "/loop"}, b"", 0)

    with pytest.raises(UrlFetchFailed, match="redirects"):
        loopback_fetcher(max_redirects=3).fetch(f"{base}/loop")


def test_bodies_over_the_size_cap_are_refused_whether_declared_or_not(server):
    base, routes = server
    routes["/declared"] = (200, {}, b"x" * 5000, 0)
    routes["/undeclared"] = (200, {"Content-Length": "10"}, b"x" * 10, 0)

    with pytest.raises(PayloadTooLarge):
        loopback_fetcher(max_bytes=1000).fetch(f"{base}/declared")
    with pytest.raises(PayloadTooLarge):
        loopback_fetcher(max_bytes=5).fetch(f"{base}/undeclared")


def test_a_slow_server_is_cut_off_at_the_time_cap(server):
    base, routes = server
    routes["/slow"] = (200, {}, b"late", 3.0)

    started = time.monotonic()
    with pytest.raises(UrlFetchFailed):
        loopback_fetcher(timeout_seconds=0.5).fetch(f"{base}/slow")
    assert time.monotonic() - started < 2.5


def test_http_errors_and_refused_connections_are_fetch_failures(server):
    base, _ = server
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]

    with pytest.raises(UrlFetchFailed, match="404"):
        loopback_fetcher().fetch(f"{base}/nothing-here")
    with pytest.raises(UrlFetchFailed):
        loopback_fetcher().fetch(f"http://127.0.0.1:{port}/x.jpg")
    closed_port.close()

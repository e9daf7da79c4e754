"""The local stand-in for API Gateway: the gateway's routes to the two functions, and web/.

It follows :data:`imgclassify.serving.routes.ROUTES`, the same table the gateway spec is built from.

Like the gateway, it reads a whole request before forwarding it, and it is as strict about
HTTP framing as a front end must be (RFC 9112). h11 parses each request: the method must be a
token, the request target printable ASCII, a body is framed by one Content-Length or by
``chunked`` (never both here, never two different lengths), chunk sizes are hexadecimal, and a
body ends where its framing says. Anything else is answered with a 400 JSON error and the
connection is closed; a body over ``max_body_bytes`` with 413, before it is read when its
length is declared. A client that stops sending is dropped after ``read_timeout_seconds``
(``4 x`` that for a whole body), and at most ``max_connections`` connections are served at
once, one thread each; others wait in the listen backlog.
"""

from __future__ import annotations

import io
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import h11
import requests
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.wrappers import Request, Response

from imgclassify.errors import BackendUnavailable, InvalidRequest, NotFound, PayloadTooLarge, ServiceError
from imgclassify.serving.http import error_response
from imgclassify.serving.routes import match

from .gateway import GatewayPolicy

# Hop-by-hop headers are the router's own business, not the backend's.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                "proxy-authorization", "proxy-authenticate", "content-length", "content-encoding", "host",
                "server", "date"}
_MAX_HEAD_BYTES = 64 * 1024


class RouterServer(socketserver.ThreadingTCPServer):
    """Serves one WSGI ``app`` over HTTP/1.1 on ``address``, framing requests with h11."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Callable, max_body_bytes: int,
                 read_timeout_seconds: float = 10.0, max_connections: int = 64) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_seconds = read_timeout_seconds
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Connection)

    def process_request(self, request, client_address) -> None:
        # A thread per connection, at most max_connections of them: the accept loop waits for a slot.
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: requests one after another (keep-alive) until either side closes."""

    server: RouterServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.read_timeout_seconds)
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
        while True:
            try:
                received = self._read_request(sock, connection)
            except ServiceError as error:
                self._send_refusal(sock, error)
                return
            except OSError:  # a timeout or a reset: the client stopped sending
                return
            if received is None:
                return
            status, headers, body = self._call_app(*received)
            try:
                keep_alive = self._send(sock, connection, received[0], status, headers, body)
            except (OSError, h11.LocalProtocolError):
                return
            if not keep_alive:
                return
            connection.start_next_cycle()

    def _read_request(self, sock: socket.socket, connection: h11.Connection) -> tuple[h11.Request, bytes] | None:
        limit = self.server.max_body_bytes
        deadline = None
        request, parts, total = None, [], 0
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as error:
                raise InvalidRequest(f"the request cannot be parsed: {error}") from None
            if event is h11.NEED_DATA:
                if deadline is not None and time.monotonic() > deadline:
                    raise InvalidRequest("the body was not received in time")
                if request is not None and connection.they_are_waiting_for_100_continue:
                    sock.sendall(connection.send(h11.InformationalResponse(status_code=100, headers=[])))
                connection.receive_data(sock.recv(1 << 16))
            elif isinstance(event, h11.Request):
                request = event
                _check_framing(event, limit)
                deadline = time.monotonic() + 4 * self.server.read_timeout_seconds
            elif isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    raise PayloadTooLarge(f"the body passes the limit of {limit} bytes")
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                if request is None:
                    return None
                raise InvalidRequest("the connection closed before the request ended")

    def _call_app(self, request: h11.Request, body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        answer: dict = {}

        def start_response(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers

        result = self.server.app(_environ(request, body, self.client_address, self.server.server_address),
                                 start_response)
        try:
            payload = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        return answer["status"], answer["headers"], payload

    @staticmethod
    def _send(sock: socket.socket, connection: h11.Connection, request: h11.Request, status: str,
              headers: list[tuple[str, str]], body: bytes) -> bool:
        code, _, reason = status.partition(" ")
        sent = [(name, value) for name, value in headers if name.lower() not in ("content-length", "transfer-encoding")]
        sent.append(("Content-Length", str(len(body))))
        sock.sendall(connection.send(h11.Response(status_code=int(code), headers=sent, reason=reason)))
        if body and request.method != b"HEAD":
            sock.sendall(connection.send(h11.Data(data=body)))
        sock.sendall(connection.send(h11.EndOfMessage()))
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE

    @staticmethod
    def _send_refusal(sock: socket.socket, error: ServiceError) -> None:
        """The router's own refusal of what h11 could not frame, written directly: the connection
        is closed after it, whatever state the parse left it in."""
        payload = json.dumps(error.to_json()).encode()
        reason = "Payload Too Large" if error.status == 413 else "Bad Request"
        head = (f"HTTP/1.1 {error.status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        try:
            sock.sendall(head.encode() + payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client is gone


def _check_framing(request: h11.Request, limit: int) -> None:
    """What h11 lets through and a front end must not: both framings, another HTTP version, and a
    declared length over the limit (refused before a byte of the body is read)."""
    names = [name for name, _ in request.headers]
    if request.http_version not in (b"1.0", b"1.1"):
        raise InvalidRequest(f"HTTP/{request.http_version.decode('latin-1')[:10]} is not supported")
    if b"transfer-encoding" in names and b"content-length" in names:
        raise InvalidRequest("the request has both Transfer-Encoding and Content-Length")
    for name, value in request.headers:
        if name == b"content-length" and int(value) > limit:
            raise PayloadTooLarge(f"the body has {int(value)} bytes; the limit is {limit}")


def _environ(request: h11.Request, body: bytes, client: tuple, server: tuple) -> dict:
    """The WSGI environ of one request (PEP 3333: the path percent-decoded, as latin-1)."""
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": request.method.decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "REQUEST_URI": target,
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode()}",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in request.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name not in ("content-length", "transfer-encoding"):
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class Router:
    """Proxies API routes to the functions' URLs and serves ``web_dir`` for everything else.

    With a ``gateway`` policy it checks keys and quotas first, as API Gateway does, and serves
    the page a ``config.js`` holding the key, as the deploy's publish-web step writes it.
    """

    def __init__(self, backends: dict[str, str], web_dir: Path, gateway: GatewayPolicy | None = None) -> None:
        self.backends = backends
        self.gateway = gateway
        self.session = requests.Session()
        self.static = SharedDataMiddleware(self._not_found, {"/": str(web_dir)}, cache_timeout=0,
                                           fallback_mimetype="text/plain")
        self.web_dir = web_dir

    @staticmethod
    def _not_found(environ, start_response):
        return error_response(NotFound("no such page"))(environ, start_response)

    def __call__(self, environ, start_response):
        request = Request(environ)
        found = match(request.path)
        if found is None:
            if request.path == "/":
                environ["PATH_INFO"] = "/index.html"
            if request.path == "/config.js" and self.gateway is not None:
                return self._page_config()(environ, start_response)
            return self.static(environ, start_response)
        if self.gateway is not None:
            refusal = self.gateway.check(request.method, found[0].template, request.headers, request.args)
            if refusal is not None:
                return Response(refusal.body(), refusal.status, content_type="application/json")(
                    environ, start_response)
        return self._forward(request, self.backends[found[0].function])(environ, start_response)

    def _page_config(self) -> Response:
        config = {"apiBase": "", "apiKey": self.gateway.api_key}
        return Response(f"window.IMGCLASSIFY_CONFIG = {json.dumps(config)};\n", content_type="text/javascript",
                        headers={"Cache-Control": "no-cache"})

    def _forward(self, request: Request, backend: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        # A new connection per request: a pooled keep-alive connection may be closed by
        # gunicorn (2 s keep-alive) just as it is reused, which the client would see as a reset.
        headers["Connection"] = "close"
        try:
            upstream = self.session.request(
                request.method, backend + request.full_path.rstrip("?"), headers=headers,
                data=request.get_data(), timeout=300, allow_redirects=False)
        except requests.RequestException as error:
            return error_response(BackendUnavailable(f"the function did not answer: {type(error).__name__}",
                                                     retry_after_seconds=2))
        except ValueError as error:  # e.g. a header name http.client will not send
            return error_response(InvalidRequest(f"the request cannot be forwarded: {str(error)[:120]}"))
        return Response(upstream.content, upstream.status_code,
                        [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS])

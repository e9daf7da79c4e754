"""The local stand-in for API Gateway: the gateway's routes to the two functions, and web/.

It follows :data:`imgclassify.serving.routes.ROUTES`, the same table the gateway spec is built from.

Like the gateway, it reads a whole request before forwarding it, and it is as strict about
HTTP framing as a front end must be (RFC 9112): the method must be a token, the request
target printable ASCII, a body is framed by one Content-Length or by ``chunked`` (never
both, never two different lengths), chunk sizes are hexadecimal, and a body ends where its
framing says. Anything else is answered with a 400 JSON error and the connection is closed;
a body over ``max_body_bytes`` with 413 before it is read. A client that stops sending is
dropped after ``read_timeout_seconds``.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import requests
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from imgclassify.errors import BackendUnavailable, InvalidRequest, NotFound, PayloadTooLarge, ServiceError
from imgclassify.serving.http import error_response
from imgclassify.serving.routes import match

from .gateway import GatewayPolicy

# Hop-by-hop headers are the router's own business, not the backend's.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                "proxy-authorization", "proxy-authenticate", "content-length", "content-encoding", "host",
                "server", "date"}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_HEX = re.compile(r"[0-9A-Fa-f]{1,16}")
_MAX_LINE = 4096
_MAX_TRAILERS = 32
_ERROR_KEY = "imgclassify.router.error"


class FramingHandler(WSGIRequestHandler):
    """werkzeug's request handler, reading the body itself with strict framing and limits."""

    # socketserver applies this to the connection: a client that stops sending is dropped.
    timeout = 10.0

    def make_environ(self) -> dict:
        environ = super().make_environ()
        try:
            body = self._read_body()
        except ServiceError as error:
            environ[_ERROR_KEY] = error
            self.close_connection = True
            body = b""
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["wsgi.input_terminated"] = False
        environ["CONTENT_LENGTH"] = str(len(body))
        return environ

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, headers too long, ...) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # http.server would send a bare body: nobody speaks 0.9
            self.request_version = "HTTP/1.0"
        body = InvalidRequest(f"the request cannot be parsed: {message or code}").to_json()
        payload = json.dumps(body).encode()
        try:
            self.send_response(400, "Bad Request")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:
            pass  # the client is gone

    # --- framing -------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if not _TOKEN.fullmatch(self.command or ""):
            raise InvalidRequest(f"the method {self.command[:20]!r} is not an HTTP token")
        if not _TARGET.fullmatch(self.path or ""):
            raise InvalidRequest("the request target has characters that must be percent-encoded")
        lengths = self.headers.get_all("Content-Length") or []
        encodings = self.headers.get_all("Transfer-Encoding") or []
        deadline = time.monotonic() + 4 * self.timeout
        if encodings:
            if lengths:
                raise InvalidRequest("the request has both Transfer-Encoding and Content-Length")
            codings = [coding.strip().lower() for coding in ",".join(encodings).split(",")]
            if codings != ["chunked"]:
                raise InvalidRequest(f"Transfer-Encoding {','.join(codings)[:60]!r} is not supported; use chunked")
            return self._read_chunked(deadline)
        if not lengths:
            return b""
        values = {value.strip() for value in ",".join(lengths).split(",")}
        if len(values) != 1:
            raise InvalidRequest(f"the request has different Content-Length values: {', '.join(sorted(values))[:80]}")
        value = values.pop()
        if not (value.isascii() and value.isdigit() and len(value) <= 19):
            raise InvalidRequest(f"Content-Length {value[:30]!r} is not a number of bytes")
        length = int(value)
        if length > self.server.max_body_bytes:
            raise PayloadTooLarge(f"the body has {length} bytes; the limit is {self.server.max_body_bytes}")
        return self._read_exactly(length, deadline, "the body")

    def _read_exactly(self, size: int, deadline: float, what: str) -> bytes:
        parts, remaining = [], size
        try:
            while remaining:
                part = self.rfile.read(min(remaining, 1 << 16))
                if not part:
                    break
                parts.append(part)
                remaining -= len(part)
                if time.monotonic() > deadline:
                    raise InvalidRequest(f"{what} was not received in time")
        except OSError:  # a timeout or a reset: the client stopped sending
            pass
        data = b"".join(parts)
        if len(data) < size:
            raise InvalidRequest(f"{what} ended after {len(data)} of its {size} bytes")
        return data

    def _read_line(self, what: str) -> bytes:
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
        except OSError:
            line = b""
        if not line.endswith(b"\n") or len(line) > _MAX_LINE:
            raise InvalidRequest(f"{what} is missing, cut short or longer than {_MAX_LINE} bytes")
        return line.rstrip(b"\r\n")

    def _read_chunked(self, deadline: float) -> bytes:
        parts, total = [], 0
        while True:
            size_text = self._read_line("a chunk size line").split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_text.decode("latin-1")):
                raise InvalidRequest(f"chunk size {size_text[:20]!r} is not 1-16 hexadecimal digits")
            size = int(size_text, 16)
            if total + size > self.server.max_body_bytes:
                raise PayloadTooLarge(f"the chunked body passes the limit of {self.server.max_body_bytes} bytes")
            if size == 0:
                for _ in range(_MAX_TRAILERS):
                    if not self._read_line("the end of the chunked body"):
                        return b"".join(parts)
                raise InvalidRequest(f"more than {_MAX_TRAILERS} trailer fields")
            parts.append(self._read_exactly(size, deadline, "a chunk"))
            total += size
            if self._read_line("the end of a chunk"):
                raise InvalidRequest("a chunk is longer than its size says")


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
        if _ERROR_KEY in environ:
            response = error_response(environ[_ERROR_KEY])
            response.headers["Connection"] = "close"
            return response(environ, start_response)
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

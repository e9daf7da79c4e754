"""The local stand-in for API Gateway: the gateway's routes to the two functions, and web/.

It follows :data:`imgclassify.routes.ROUTES`, the same table the gateway spec is built from.
"""

from __future__ import annotations

from pathlib import Path

import requests
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.wrappers import Request, Response

from imgclassify.routes import match

# Hop-by-hop headers are the router's own business, not the backend's.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                "proxy-authorization", "proxy-authenticate", "content-length", "content-encoding", "host",
                "server", "date"}


class Router:
    """Proxies API routes to the functions' URLs and serves ``web_dir`` for everything else."""

    def __init__(self, backends: dict[str, str], web_dir: Path) -> None:
        self.backends = backends
        self.session = requests.Session()
        self.static = SharedDataMiddleware(self._not_found, {"/": str(web_dir)}, cache_timeout=0,
                                           fallback_mimetype="text/plain")
        self.web_dir = web_dir

    @staticmethod
    def _not_found(environ, start_response):
        return Response('{"error":{"code":"NOT_FOUND","message":"no such page","status":404}}', 404,
                        mimetype="application/json")(environ, start_response)

    def __call__(self, environ, start_response):
        request = Request(environ)
        found = match(request.path)
        if found is None:
            if request.path == "/":
                environ["PATH_INFO"] = "/index.html"
            return self.static(environ, start_response)
        backend = self.backends[found[0].function]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            upstream = self.session.request(
                request.method, backend + request.full_path.rstrip("?"), headers=headers,
                data=request.get_data(), timeout=300, allow_redirects=False)
        except requests.RequestException as error:
            return Response(f'{{"error":{{"code":"BACKEND_UNAVAILABLE","message":"{type(error).__name__}",'
                            '"status":503}}', 503, mimetype="application/json",
                            headers={"Retry-After": "2"})(environ, start_response)
        response = Response(upstream.content, upstream.status_code,
                            [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS])
        return response(environ, start_response)

"""A loopback HTTP proxy in front of the storage emulator: counts what it forwards, and can
be taken down (connections refused) and brought back on the same port."""

from __future__ import annotations

import threading
from collections import Counter

import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from devstack.processes import free_port

_SKIP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class CountingProxy:
    """Forwards everything to ``upstream``; ``counts[(method, path, is_media)]`` says how often."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.port = free_port()
        self.session = requests.Session()
        self.server = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Start answering on the proxy's port."""
        self.server = make_server("127.0.0.1", self.port, self._app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def down(self) -> None:
        """Close the port: storage looks stopped until ``up()``."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)
            self.server = None

    def media_reads(self, object_suffix: str) -> int:
        """How many object downloads (``alt=media``) asked for a name ending in ``object_suffix``."""
        with self.lock:
            return sum(n for (method, path, media), n in self.counts.items()
                       if method == "GET" and media and path.endswith(object_suffix))

    def _app(self, environ, start_response):
        request = Request(environ)
        with self.lock:
            self.counts[(request.method, request.path, request.args.get("alt") == "media")] += 1
        upstream = self.session.request(
            request.method, self.upstream + request.full_path.rstrip("?"), data=request.get_data(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in _SKIP}, timeout=60)
        headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _SKIP]
        return Response(upstream.content, upstream.status_code, headers)(environ, start_response)

    def __enter__(self) -> CountingProxy:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

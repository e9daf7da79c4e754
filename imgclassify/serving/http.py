"""The HTTP edge: routing, CORS, JSON responses, one error mapping, one log line per request.

Framework-free: takes a werkzeug ``Request`` (Flask's request is one) and returns a werkzeug
``Response``; functions-framework, the local router and tests all call an :class:`HttpApp`.
Each function's own routes are handled by a subclass in a module of its own
(:mod:`imgclassify.serving.classify_app`, :mod:`imgclassify.serving.list_models_app`), so that a function
imports only what it serves.
"""

from __future__ import annotations

import json
import logging
import time

from werkzeug.wrappers import Request, Response

from imgclassify.errors import MethodNotAllowed, NotFound, ServiceError
from imgclassify.logs import trace_fields
from imgclassify.settings import Settings

from .routes import ROOT_ROUTES, Route, match

log = logging.getLogger("imgclassify.requests")

_CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Api-Key"


def json_response(payload: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status=status, headers=headers or {}, mimetype="application/json")


def error_response(error: ServiceError) -> Response:
    """The one place where service errors become HTTP responses."""
    return json_response(error.to_json(), error.status, error.headers())


class HttpApp:
    """Serves the routes of one function; subclasses answer them in :meth:`handle`."""

    function: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def handle(self, route: Route, params: dict[str, str], request: Request, context: dict) -> Response:
        """The response to ``request`` on ``route`` (method already checked); may add log fields to ``context``."""
        raise NotImplementedError

    def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        context: dict = {}
        try:
            if request.method == "OPTIONS":
                response = Response(status=204)
            else:
                response = self._dispatch(request, context)
        except ServiceError as error:
            response = error_response(error)
            context["error"] = error.code
            if error.status >= 500:
                log.error("%s %s failed: %s", request.method, request.path, error.message)
        except Exception:  # noqa: BLE001 - a bug must still answer with JSON, never a stack trace
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(ServiceError("internal error; it has been logged"))
            context["error"] = ServiceError.code
        self._add_cors(request, response)
        self._log(request, response, started, context)
        return response

    def _dispatch(self, request: Request, context: dict) -> Response:
        found = match(request.path)
        if found is None and request.path in ("", "/"):
            found = ROOT_ROUTES[self.function], {}
        if found is None or found[0].function != self.function:
            raise NotFound(f"no route {request.path[:200]!r} here")
        route, params = found
        if request.method != route.method and not (route.method == "GET" and request.method == "HEAD"):
            raise MethodNotAllowed(request.method, [route.method, "OPTIONS"])
        return self.handle(route, params, request, context)

    def _add_cors(self, request: Request, response: Response) -> None:
        origin = request.headers.get("Origin")
        allowed = self.settings.cors_allowed_origins
        if not origin:
            return
        if "*" in allowed:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        else:
            return
        response.headers["Access-Control-Expose-Headers"] = "ETag, Retry-After"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "3600"

    def _log(self, request: Request, response: Response, started: float, context: dict) -> None:
        latency = time.perf_counter() - started
        fields = {
            "httpRequest": {
                "requestMethod": request.method,
                "requestUrl": request.url,
                "status": response.status_code,
                "latency": f"{latency:.6f}s",
                "userAgent": request.user_agent.string,
                "requestSize": str(request.content_length or 0),
                "responseSize": str(response.calculate_content_length() or 0),
            },
            "function": self.function,
            "latency_ms": round(latency * 1000, 1),
            **context,
            **trace_fields(request.headers, self.settings.google_cloud_project),
        }
        level = logging.ERROR if response.status_code >= 500 else logging.INFO
        log.log(level, "%s %s %d", request.method, request.path, response.status_code, extra={"fields": fields})

"""The HTTP edge: routing, CORS, JSON responses, one error mapping, one log line per request.

Framework-free: takes a werkzeug ``Request`` (Flask's request is one) and returns a werkzeug
``Response``; functions-framework, the local router and tests all call :class:`HttpApp`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from werkzeug.wrappers import Request, Response

from .contract import openapi_document
from .errors import MethodNotAllowed, NotFound, ServiceError
from .images import pixel_budget
from .logs import trace_fields
from .request_parsing import parse_classify_request
from .routes import ROOT_ROUTES, match
from .service import Service

log = logging.getLogger("imgclassify.requests")

_CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Api-Key"


def json_response(payload: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"))
    return Response(body, status=status, headers=headers or {}, mimetype="application/json")


def error_response(error: ServiceError) -> Response:
    """The one place where service errors become HTTP responses."""
    return json_response(error.to_json(), error.status, error.headers())


class HttpApp:
    """Serves the routes of one function (``classify`` or ``list_models``) over ``service``."""

    def __init__(self, service: Service, function: str) -> None:
        self.service = service
        self.function = function

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
        if route.function == "classify":
            return self._classify(request, params.get("name"), context)
        if route.operation == "getOpenApi":
            return self._cacheable(request, openapi_document())
        if "name" in params:
            return self._cacheable(request, self.service.describe_model(params["name"]))
        return self._cacheable(request, self.service.list_models())

    def _classify(self, request: Request, path_model: str | None, context: dict) -> Response:
        settings = self.service.settings
        parsed = parse_classify_request(request, path_model=path_model, max_bytes=settings.max_request_bytes,
                                        max_images=settings.max_images_per_request)
        # Every image this request decodes, wherever it comes from, is charged to one budget.
        with pixel_budget(settings.max_request_pixels):
            result = self.service.classify(parsed)
        context.update(model=result["model"]["name"], version=result["model"]["version"],
                       cold=result["cold_start"], images=len(parsed.images))
        return json_response(result)

    def _cacheable(self, request: Request, payload: dict) -> Response:
        response = json_response(payload)
        response.set_etag(hashlib.sha256(response.get_data()).hexdigest()[:32])
        response.headers["Cache-Control"] = f"public, max-age={int(self.service.settings.catalog_ttl_seconds)}"
        return response.make_conditional(request)

    def _add_cors(self, request: Request, response: Response) -> None:
        origin = request.headers.get("Origin")
        allowed = self.service.settings.cors_allowed_origins
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
            **trace_fields(request.headers, self.service.settings.google_cloud_project),
        }
        level = logging.ERROR if response.status_code >= 500 else logging.INFO
        log.log(level, "%s %s %d", request.method, request.path, response.status_code, extra={"fields": fields})

"""The ``classify`` function's HTTP routes: ``POST /v1/classify`` and ``POST /v1/models/{name}:classify``."""

from __future__ import annotations

from werkzeug.wrappers import Request, Response

from .http import HttpApp, json_response
from .images import pixel_budget
from .request_parsing import parse_classify_request
from .routes import Route
from .service import ClassifyService


class ClassifyApp(HttpApp):
    function = "classify"

    def __init__(self, service: ClassifyService) -> None:
        super().__init__(service.settings)
        self.service = service

    def handle(self, route: Route, params: dict[str, str], request: Request, context: dict) -> Response:
        settings = self.settings
        parsed = parse_classify_request(request, path_model=params.get("name"), max_bytes=settings.max_request_bytes,
                                        max_images=settings.max_images_per_request)
        # Every image this request decodes, wherever it comes from, is charged to one budget.
        with pixel_budget(settings.max_request_pixels):
            result = self.service.classify(parsed)
        context.update(model=result["model"]["name"], version=result["model"]["version"],
                       cold=result["cold_start"], images=len(parsed.images))
        return json_response(result)

"""The ``list_models`` function's HTTP routes: the model list, one model, and the OpenAPI document.

Every answer is cacheable (ETag, ``Cache-Control: max-age`` of the catalog's TTL). Nothing
here imports an engine, numpy or Pillow: a cold start of this function pays for none of them.
"""

from __future__ import annotations

import hashlib

from werkzeug.wrappers import Request, Response

from imgclassify.settings import Settings
from imgclassify.store.read_ahead import ReadAhead

from .contract import openapi_document
from .http import HttpApp, json_response
from .listing import ModelListing
from .routes import Route


class ListModelsApp(HttpApp):
    function = "list_models"

    def __init__(self, listing: ModelListing, settings: Settings) -> None:
        super().__init__(settings)
        self.listing = listing

    def handle(self, route: Route, params: dict[str, str], request: Request, context: dict) -> Response:
        if route.operation == "getOpenApi":
            return self._cacheable(request, openapi_document())
        if "name" in params:
            return self._cacheable(request, self.listing.describe_model(params["name"]))
        return self._cacheable(request, self.listing.list_models())

    def _cacheable(self, request: Request, payload: dict) -> Response:
        response = json_response(payload)
        response.set_etag(hashlib.sha256(response.get_data()).hexdigest()[:32])
        response.headers["Cache-Control"] = f"public, max-age={int(self.settings.catalog_ttl_seconds)}"
        return response.make_conditional(request)


def build(settings: Settings) -> ListModelsApp:
    """The list_models app over ``settings``: the catalog's view and the cache lifetime."""
    return ListModelsApp(ModelListing.from_settings(settings), settings)


def warm(app: ListModelsApp, settings: Settings, read_ahead: ReadAhead | None = None) -> dict[str, float]:
    """Nothing to do before serving: the first request reads the catalog (no read ahead is started
    for this function)."""
    return {}

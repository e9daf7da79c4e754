"""The public routes of the HTTP contract, and which function serves each.

The functions, the local router, the OpenAPI document (:mod:`imgclassify.serving.contract`) and,
through it, the gateway spec all follow this one table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The Cloud Functions, one folder functions/<name>/ each; every other list of them derives from this.
FUNCTIONS = ("classify", "list_models")


@dataclass(frozen=True)
class Route:
    function: str          # one of FUNCTIONS
    method: str
    template: str          # as in the gateway spec, e.g. /v1/models/{name}:classify
    operation: str

    @property
    def pattern(self) -> re.Pattern:
        # {name} takes any characters, slashes included, so that a malformed name reaches
        # the name check (400 INVALID_MODEL_NAME) instead of looking like a missing route; but
        # not a line break (\Z, not $): such a path is no route, the router's JSON 404 (the functions
        # would answer it with an HTML page).
        return re.compile(re.escape(self.template).replace(r"\{name\}", "(?P<name>.+)") + r"\Z")


# Order matters: ":classify" and ":embed" must be tried before the plain model route.
ROUTES = (
    Route("list_models", "GET", "/v1/models", "listModels"),
    Route("classify", "POST", "/v1/models/{name}:classify", "classifyWithModel"),
    Route("classify", "POST", "/v1/models/{name}:embed", "embedWithModel"),
    Route("list_models", "GET", "/v1/models/{name}", "getModel"),
    Route("classify", "POST", "/v1/classify", "classify"),
    Route("list_models", "GET", "/v1/openapi.json", "getOpenApi"),
)

# A function called on its own URL (no gateway path) does its main job.
ROOT_ROUTES = {
    "classify": Route("classify", "POST", "/", "classify"),
    "list_models": Route("list_models", "GET", "/", "listModels"),
}


def match(path: str) -> tuple[Route, dict[str, str]] | None:
    """The route whose template matches ``path``, with its parameters, or None."""
    for route in ROUTES:
        found = route.pattern.match(path)
        if found:
            return route, found.groupdict()
    return None

"""The public HTTP contract: one OpenAPI 3.1 document of the whole v1 API, built from one source.

Paths and methods come from the route table (:data:`imgclassify.serving.routes.ROUTES`), error codes
and statuses from the error classes (:mod:`imgclassify.errors`), name patterns from the
catalog's own checks, and the request and response shapes are written once, here.
``list_models`` serves the document at ``GET /v1/openapi.json``; the API Gateway spec
(``infra/terraform/openapi.yaml.tftpl``, OpenAPI 2.0) is generated from it by
``scripts/build_gateway_spec.py``, and tests prove the README's error table, the served
routes and the gateway spec agree with it. Schemathesis fuzzes the running stack against it.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from imgclassify.errors import ServiceError, api_error_classes
from imgclassify.store.catalog import MODEL_NAME, MODEL_VERSION
from imgclassify.store.objects import BUCKET_NAME
from imgclassify.top_k import DEFAULT_TOP_K, MAX_TOP_K

from .routes import ROUTES, Route

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
TITLE = "imgclassify image classification"
DESCRIPTION = ("Top-k image classification with the model you choose. Models are published to a bucket "
               "and served warm. Every error is JSON: {\"error\": {\"code\", \"message\", \"status\"}}.")

# Raw image bodies the classify operations take (besides multipart/form-data and JSON).
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
                     "application/octet-stream")
# The catalog's own checks (catalog.check_name / check_version) also refuse "..".
MODEL_NAME_PATTERN = f"^{MODEL_NAME.pattern}$"
MODEL_REF_PATTERN = f"^{MODEL_NAME.pattern}(@{MODEL_VERSION.pattern})?$"
GCS_URI_PATTERN = f"^gs://{BUCKET_NAME.pattern}/.+$"

# A 1x1 PNG, as the base64 example of a JSON instance.
_EXAMPLE_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"

_REF = "#/components/schemas/"


def _answering_model() -> dict[str, Any]:
    """The ``model`` of a classify or embed answer (a fresh dict: the gateway spec's YAML has no aliases)."""
    return {"type": "object", "required": ["name", "version"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                           "random_init": {"type": "boolean"}}}


def _per_image(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The ``results`` of a classify or embed answer: one object per input image holding ``field``."""
    return {"type": "array", "minItems": 1, "description": "One result per input image, in input order.",
            "items": {"type": "object", "required": [field], "properties": {field: schema}}}


def _cold_start_and_timing() -> dict[str, Any]:
    return {
        "cold_start": {"type": "boolean", "description": "Whether this request waited for the model to load."},
        "timing_ms": {"type": "object", "required": ["model_load", "decode_preprocess", "inference", "total"],
                      "additionalProperties": {"type": "number", "minimum": 0}},
    }

SCHEMAS: dict[str, dict[str, Any]] = {
    "ModelRef": {
        "type": "string", "pattern": MODEL_REF_PATTERN, "maxLength": 97,
        "description": "A published model name, optionally name@version (name@latest is the same as name).",
        "examples": ["efficientnet_lite0", "efficientnet_lite0@1"],
    },
    "ModelChoice": {
        "type": "string", "pattern": f"^(?:{MODEL_NAME.pattern}(@{MODEL_VERSION.pattern})?)?$", "maxLength": 97,
        "description": "The model to use, as in ModelRef; empty (or absent) means the default model.",
    },
    "TopK": {
        "type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K,
        "description": f"How many labels per image (1..{MAX_TOP_K}, default {DEFAULT_TOP_K}); "
                       "capped at the model's class count.",
    },
    "Instance": {
        "description": "One image: base64 bytes, an object in an allowed bucket, or a URL (SSRF-checked).",
        "oneOf": [
            {"type": "object", "required": ["b64"], "title": "b64",
             "properties": {"b64": {"type": "string", "minLength": 1, "contentEncoding": "base64"}}},
            {"type": "object", "required": ["gcs_uri"], "title": "gcs_uri",
             "properties": {"gcs_uri": {"type": "string", "pattern": GCS_URI_PATTERN, "maxLength": 1300}}},
            {"type": "object", "required": ["url"], "title": "url",
             "properties": {"url": {"type": "string", "format": "uri", "minLength": 1}}},
        ],
    },
    "ClassifyJson": {
        "type": "object", "required": ["instances"],
        "properties": {
            "instances": {"type": "array", "minItems": 1, "items": {"$ref": _REF + "Instance"},
                          "description": "At most MAX_IMAGES_PER_REQUEST (default 32) images, one result each."},
            "model": {"$ref": _REF + "ModelChoice"},
            "top_k": {"$ref": _REF + "TopK"},
        },
    },
    "ClassifyForm": {
        "type": "object", "required": ["image"],
        "properties": {
            "image": {"type": "array", "minItems": 1,
                      # format: binary besides 3.1's contentMediaType: what client generators
                      # (openapi-python-client, openapi-generator) read as a file upload.
                      "items": {"type": "string", "format": "binary",
                                "contentMediaType": "application/octet-stream"}},
            "model": {"$ref": _REF + "ModelChoice"},
            "top_k": {"$ref": _REF + "TopK"},
        },
    },
    "Prediction": {
        "type": "object", "required": ["label", "index", "score"],
        "properties": {"label": {"type": "string"}, "index": {"type": "integer", "minimum": 0},
                       "score": {"type": "number", "minimum": 0, "maximum": 1}},
    },
    "Classification": {
        "type": "object", "required": ["model", "results", "cold_start", "timing_ms"],
        "properties": {
            "model": _answering_model(),
            "results": _per_image("predictions", {
                "type": "array", "minItems": 1, "maxItems": MAX_TOP_K, "items": {"$ref": _REF + "Prediction"},
                "description": "Most likely first; scores are softmax probabilities."}),
            **_cold_start_and_timing(),
        },
    },
    "Embeddings": {
        "type": "object", "required": ["model", "results", "dimensions", "cold_start", "timing_ms"],
        "properties": {
            "model": _answering_model(),
            "results": _per_image("embedding", {
                "type": "array", "minItems": 1, "items": {"type": "number"},
                "description": "The image's penultimate features (the input of the model's final linear layer), "
                               "L2-normalised unless normalize=false: cosine similarity is then a dot product."}),
            "dimensions": {"type": "integer", "minimum": 1, "description": "The length of every embedding."},
            **_cold_start_and_timing(),
        },
    },
    "ModelSummary": {
        "type": "object",
        "required": ["name", "version", "default", "description", "input_size", "num_classes", "weights_bytes"],
        "properties": {
            "name": {"type": "string", "pattern": MODEL_NAME_PATTERN},
            "version": {"type": "string"},
            "default": {"type": "boolean"},
            "description": {"type": "string"},
            "architecture": {"type": "string"},
            "input_size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3, "maxItems": 3},
            "num_classes": {"type": "integer", "minimum": 1},
            "weights_bytes": {"type": "integer", "minimum": 0, "description": "Bytes of the file that is served."},
            "feature_size": {"type": ["integer", "null"], "minimum": 1,
                             "description": "Length of the model's embeddings (`:embed`); null if it serves none."},
            "random_init": {"type": "boolean"},
            "top1_accuracy": {"type": ["number", "null"]},
            "licence": {"type": ["string", "null"]},
            "source": {"type": ["string", "null"]},
            "published_at": {"type": "string"},
            "precision": {"type": "string", "enum": ["fp32", "int8"],
                          "description": "int8: a twin quantized from the fp32 model in quantized_from."},
            "agreement": {
                "type": ["object", "null"],
                "description": "An int8 twin's measured agreement with its source on held-out real-photo crops. "
                               "top1_agreement (what publishing is gated on) is over the judged crops: those whose "
                               "top-1 the source keeps under one 8-bit step of input noise; the other figures are "
                               "over all held_out_crops.",
                "properties": {"held_out_crops": {"type": "integer", "minimum": 1},
                               "judged_crops": {"type": "integer", "minimum": 0},
                               "top1_agreement": {"type": "number", "minimum": 0, "maximum": 1},
                               "top1_agreement_all": {"type": "number", "minimum": 0, "maximum": 1},
                               "top5_overlap": {"type": "number", "minimum": 0, "maximum": 1},
                               "max_probability_difference": {"type": "number", "minimum": 0, "maximum": 1},
                               "source_noise_stable": {"type": "number", "minimum": 0, "maximum": 1}}},
            "quantized_from": {"type": ["object", "null"],
                               "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
            "versions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelList": {
        "type": "object", "required": ["models", "default_model"],
        "properties": {"models": {"type": "array", "items": {"$ref": _REF + "ModelSummary"},
                                  "description": "The latest version of every model, default first, then by name."},
                       "default_model": {"type": ["string", "null"]}},
    },
    "ModelDetail": {
        "type": "object",
        "required": ["name", "version", "default", "labels", "preprocessing", "versions", "latest"],
        "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "default": {"type": "boolean"},
            "labels": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "preprocessing": {"type": "object", "required": ["resize", "crop_size", "mean", "std"]},
            "metadata": {"type": "object"},
            "evaluation": {
                "type": ["object", "null"],
                "description": "A trained classifier's figures on its held-out images (null for other models): "
                               "accuracy, per-label precision and recall, the confusion matrix (rows: true "
                               "label, columns: predicted, in the order of per_label).",
                "required": ["images", "accuracy", "per_label", "confusion_matrix"],
                "properties": {
                    "images": {"type": "integer", "minimum": 1},
                    "accuracy": {"type": "number", "minimum": 0, "maximum": 1},
                    "per_label": {"type": "array", "items": {
                        "type": "object", "required": ["label", "precision", "recall", "images"],
                        "properties": {"label": {"type": "string"}, "precision": {"type": "number"},
                                       "recall": {"type": "number"}, "images": {"type": "integer"}}}},
                    "confusion_matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                },
            },
            "versions": {"type": "array", "items": {"type": "object", "required": ["name", "version"]}},
            "latest": {"type": "string"},
        },
    },
    "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"]},
}


def _error_schema(classes: list[type[ServiceError]], status: int | None = None) -> dict[str, Any]:
    codes = [cls.code for cls in classes]
    return {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "status"],
            "properties": {
                "code": {"enum": codes},
                "message": {"type": "string", "description": "What was expected and what was found."},
                "status": {"const": status} if status else {"type": "integer"},
            },
        }},
    }


def error_codes_by_status() -> dict[int, list[str]]:
    """Every code the API can answer with, by HTTP status (from the error classes)."""
    table: dict[int, list[str]] = {}
    for cls in api_error_classes():
        table.setdefault(cls.status, []).append(cls.code)
    return table


_STATUS_TEXT = {400: "Bad request", 403: "Forbidden source", 404: "Not found", 405: "Method not allowed",
                413: "Too large", 415: "Unsupported media type", 422: "Undecodable image",
                500: "Server error (a bug, or stored data failing its integrity check)",
                503: "Temporarily unavailable; retry after Retry-After seconds"}
_STATUS_HEADERS = {
    405: {"Allow": {"schema": {"type": "string"}, "description": "The methods the route takes."}},
    503: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "description": "Seconds."}},
}


def _error_response(status: int) -> dict[str, Any]:
    classes = [cls for cls in api_error_classes() if cls.status == status]
    lines = "; ".join(f"`{cls.code}`: {cls.meaning}" for cls in classes)
    response: dict[str, Any] = {
        "description": f"{_STATUS_TEXT[status]}. {lines}.",
        "content": {"application/json": {"schema": {"$ref": f"{_REF}Error{status}"}}},
    }
    if status in _STATUS_HEADERS:
        response["headers"] = _STATUS_HEADERS[status]
    return response


# API Gateway's own refusals on the operations that need a key (ESPv2's Envoy local reply;
# devstack/gateway.py answers the same locally with LOCAL_API_KEY). They carry no CORS headers.
GATEWAY_ERROR = {
    "type": "object", "required": ["code", "message"],
    "description": "API Gateway's own refusal: the HTTP status and 'STATUS_NAME: text'. Not the API's error shape.",
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
}
_GATEWAY_REFUSALS = {
    400: "a key the gateway does not know (`INVALID_ARGUMENT: API key not valid. ...`)",
    401: "no API key (`UNAUTHENTICATED: Method doesn't allow unregistered callers ...`)",
    403: "a key whose restrictions refuse the call (`PERMISSION_DENIED: ...`, e.g. its referrer)",
    429: "the consumer's per-minute quota is spent (`RESOURCE_EXHAUSTED: Quota exceeded ...`)",
}


def _with_gateway_refusals(responses: dict[str, Any]) -> dict[str, Any]:
    """An operation's responses with API Gateway's refusals added (the API's own shape first)."""
    gateway_ref = {"$ref": f"{_REF}GatewayError"}
    for status, meaning in _GATEWAY_REFUSALS.items():
        response = responses.get(str(status))
        if response is None:
            responses[str(status)] = {"description": f"API Gateway: {meaning}.",
                                      "content": {"application/json": {"schema": gateway_ref}}}
        else:
            response["description"] += f" From API Gateway: {meaning}."
            media = response["content"]["application/json"]
            media["schema"] = {"anyOf": [media["schema"], gateway_ref]}
    return dict(sorted(responses.items()))


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF + schema}}}}


_NAME_PARAMETER = {"name": "name", "in": "path", "required": True, "schema": {"$ref": _REF + "ModelRef"},
                   "description": "A published model name, optionally name@version."}
_MODEL_PARAMETER = {"name": "model", "in": "query", "required": False, "schema": {"$ref": _REF + "ModelChoice"},
                    "description": "Model name or name@version (absent or empty: the default model)."}
_TOP_K_PARAMETER = {"name": "top_k", "in": "query", "required": False, "schema": {"$ref": _REF + "TopK"},
                    "description": "How many labels per image."}
_NORMALIZE_PARAMETER = {"name": "normalize", "in": "query", "required": False,
                        "schema": {"type": "boolean", "default": True},
                        "description": "false: the raw penultimate features, as the batch job's --features rows "
                                       "hold them, instead of unit-length ones."}
_NOT_MODIFIED = {"304": {"description": "Not modified: If-None-Match matched the ETag."}}
_CACHEABLE_HEADERS = {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string"}}}

_CLASSIFY_BODY = {
    "required": True,
    "description": "Raw image bytes; or multipart/form-data with one or more `image` file fields; or JSON "
                   "instances. At most MAX_REQUEST_MB (default 20) bytes.",
    "content": {
        **{media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in IMAGE_MEDIA_TYPES},
        "multipart/form-data": {"schema": {"$ref": _REF + "ClassifyForm"},
                                "encoding": {"image": {"contentType": "image/*, application/octet-stream"}}},
        "application/json": {
            "schema": {"$ref": _REF + "ClassifyJson"},
            "examples": {"base64": {"value": {"instances": [{"b64": _EXAMPLE_PNG_B64}], "top_k": 3}}},
        },
    },
}

# What each operation of the route table is: summary, parameters, body, success, error statuses.
_OPERATIONS: dict[str, dict[str, Any]] = {
    "listModels": {
        "summary": "Every published model, default first (ETag, Cache-Control).",
        "responses": {"200": {**_json("ModelList", "The catalog."), "headers": _CACHEABLE_HEADERS}, **_NOT_MODIFIED},
        "errors": (405, 500, 503),
    },
    "getModel": {
        "summary": "One model: summary, labels, preprocessing, all versions.",
        "parameters": [_NAME_PARAMETER],
        "responses": {"200": {**_json("ModelDetail", "The model."), "headers": _CACHEABLE_HEADERS}, **_NOT_MODIFIED},
        "errors": (400, 404, 405, 500, 503),
    },
    "classifyWithModel": {
        "summary": "Classify images with the model named in the path.",
        "parameters": [_NAME_PARAMETER, _TOP_K_PARAMETER],
        "requestBody": _CLASSIFY_BODY,
        "responses": {"200": _json("Classification", "One result per image, in input order.")},
        "errors": (400, 403, 404, 405, 413, 415, 422, 500, 503),
    },
    "embedWithModel": {
        "summary": "Embed images with the model named in the path: L2-normalised penultimate features.",
        "parameters": [_NAME_PARAMETER, _NORMALIZE_PARAMETER],
        "requestBody": _CLASSIFY_BODY,
        "responses": {"200": _json("Embeddings", "One embedding per image, in input order.")},
        "errors": (400, 403, 404, 405, 413, 415, 422, 500, 503),
    },
    "classify": {
        "summary": "Classify images; model from the query, the body, or the default.",
        "parameters": [_MODEL_PARAMETER, _TOP_K_PARAMETER],
        "requestBody": _CLASSIFY_BODY,
        "responses": {"200": _json("Classification", "One result per image, in input order.")},
        "errors": (400, 403, 404, 405, 413, 415, 422, 500, 503),
    },
    "getOpenApi": {
        "summary": "This document: the whole v1 API as OpenAPI 3.1.",
        "responses": {"200": {**_json("OpenApiDocument", "The OpenAPI document."), "headers": _CACHEABLE_HEADERS},
                      **_NOT_MODIFIED},
        "errors": (405, 500),
    },
}


def _operation(route: Route) -> dict[str, Any]:
    spec = _OPERATIONS[route.operation]
    operation: dict[str, Any] = {"operationId": route.operation, "summary": spec["summary"],
                                 "x-function": route.function}
    if "parameters" in spec:
        operation["parameters"] = copy.deepcopy(spec["parameters"])
    if "requestBody" in spec:
        operation["requestBody"] = copy.deepcopy(spec["requestBody"])
    errors = {str(status): _error_response(status) for status in spec["errors"]}
    operation["responses"] = _with_gateway_refusals({**copy.deepcopy(spec["responses"]), **errors})
    return operation


def _preflight(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{route.operation}Preflight",
        "summary": "CORS preflight, answered by the function (no API key).",
        "security": [],
        "x-function": route.function,
        "responses": {"204": {"description": "Access-Control-Allow-* headers for allowed origins."}},
    }
    if any(parameter["in"] == "path" for parameter in _OPERATIONS[route.operation].get("parameters", [])):
        # Any name: a preflight only asks whether the origin may call; the call checks the name.
        operation["parameters"] = [{**_NAME_PARAMETER, "schema": {"type": "string", "minLength": 1},
                                    "description": "Any model name: the preflight answers for every path."}]
        # A name that leaves no path of this route (".." is resolved away by clients) finds none.
        operation["responses"]["404"] = _error_response(404)
    return operation


@functools.cache
def _document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        item = paths.setdefault(route.template, {})
        item[route.method.lower()] = _operation(route)
        item["options"] = _preflight(route)
    by_status = error_codes_by_status()
    schemas = {**copy.deepcopy(SCHEMAS),
               "Error": _error_schema(api_error_classes()), "GatewayError": copy.deepcopy(GATEWAY_ERROR),
               **{f"Error{status}": _error_schema([c for c in api_error_classes() if c.status == status], status)
                  for status in by_status}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": TITLE, "version": API_VERSION, "description": DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "servers": [{"url": "/", "description": "The gateway, or `make dev`'s http://127.0.0.1:8080"}],
        "security": [{"api_key": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"api_key": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                            "description": "Required by the gateway; the functions ignore it."}},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the v1 API (a fresh copy each call)."""
    return copy.deepcopy(_document())

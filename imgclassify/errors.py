"""The service's error hierarchy: every failure a client can see, with its HTTP meaning.

One class per machine-readable ``code``; each carries its HTTP ``status``. The API layer
turns any of them into ``{"error": {"code", "message", "status"}}`` in one place
(:func:`imgclassify.serving.http.error_response`), and the public contract
(:mod:`imgclassify.serving.contract`) lists the codes from the classes here, so this module is the
single source of the error table. Messages say what was expected and what was found.

Classes with ``in_api = False`` (the 503 base, the local router's) are never answered by the
HTTP API. Errors that are not the API's live with their owners and outside this hierarchy:
the publisher's in :mod:`imgclassify.publish.errors`, a storage precondition
(:class:`imgclassify.store.objects.GenerationMismatch`) in the store.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: an error with a JSON code and an HTTP status (itself: a bug, 500 INTERNAL)."""

    status = 500
    code = "INTERNAL"
    in_api = True
    #: one line for the contract and the README's error table
    meaning = "a bug; it has been logged"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Extra response headers this error asks for."""
        return {}

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


# --- 400 -------------------------------------------------------------------------------------


class InvalidRequest(ServiceError):
    status = 400
    code = "INVALID_REQUEST"
    meaning = "the request's shape is wrong (JSON fields, HTTP framing)"


class InvalidJson(InvalidRequest):
    code = "INVALID_JSON"
    meaning = "the JSON body does not parse, or is nested too deeply"


class InvalidBase64(InvalidRequest):
    code = "INVALID_BASE64"
    meaning = "an instance's b64 is not base64"


class InvalidTopK(InvalidRequest):
    code = "INVALID_TOP_K"
    meaning = "top_k is not a whole number from 1 to 100, or is given twice differently"


class InvalidModelName(InvalidRequest):
    code = "INVALID_MODEL_NAME"
    meaning = "the model name is not 1-64 of a-z, 0-9, _ - ."


class InvalidModelVersion(InvalidRequest):
    code = "INVALID_MODEL_VERSION"
    meaning = "the version after @ is not 1-32 of A-Z, a-z, 0-9, _ - ."


class InvalidUrl(InvalidRequest):
    code = "INVALID_URL"
    meaning = "an instance's url does not parse or has no host"


class InvalidGcsUri(InvalidRequest):
    code = "INVALID_GCS_URI"
    meaning = "an instance's gcs_uri is not gs://BUCKET/OBJECT"


class ConflictingModel(InvalidRequest):
    code = "CONFLICTING_MODEL"
    meaning = "path, query and body name different models"


class EmptyBody(InvalidRequest):
    code = "EMPTY_BODY"
    meaning = "no body"


class MissingImage(InvalidRequest):
    code = "MISSING_IMAGE"
    meaning = "a multipart body without an image field"


class EmbeddingsUnavailable(InvalidRequest):
    code = "EMBEDDINGS_UNAVAILABLE"
    meaning = "`:embed` on a model whose graph has no feature output (`publish migrate` adds it)"


# --- 403, 404, 405 ----------------------------------------------------------------------------


class ForbiddenSource(ServiceError):
    """A ``gcs_uri`` or ``url`` that the configuration does not allow."""

    status = 403
    code = "FORBIDDEN_SOURCE"
    meaning = "a gcs_uri outside ALLOWED_GCS_BUCKETS; a url to a non-public address, or a scheme not allowed"


class UnknownModel(ServiceError):
    status = 404
    code = "UNKNOWN_MODEL"
    meaning = "no model of that name is published"


class UnknownVersion(ServiceError):
    status = 404
    code = "UNKNOWN_VERSION"
    meaning = "the model has no such version"


class NotFound(ServiceError):
    """A route that does not exist."""

    status = 404
    code = "NOT_FOUND"
    meaning = "no such route"


class ObjectNotFound(NotFound):
    """The named storage object does not exist."""

    code = "OBJECT_NOT_FOUND"
    meaning = "the gcs_uri names no object"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "METHOD_NOT_ALLOWED"
    meaning = "wrong method for the route; with an Allow header"

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(f"method {method} is not allowed here; use {', '.join(allowed)}")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


# --- 413, 415, 422 ----------------------------------------------------------------------------


class PayloadTooLarge(ServiceError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    meaning = "a body over MAX_REQUEST_MB (or a url or gcs_uri object over it)"


class ImageTooLarge(PayloadTooLarge):
    code = "IMAGE_TOO_LARGE"
    meaning = "an image over MAX_IMAGE_PIXELS, or a side over 65535, read from its header"


class TooManyImages(PayloadTooLarge):
    code = "TOO_MANY_IMAGES"
    meaning = "more images than MAX_IMAGES_PER_REQUEST"


class PixelBudgetExceeded(PayloadTooLarge):
    code = "PIXEL_BUDGET_EXCEEDED"
    meaning = "the request's images together need more than MAX_REQUEST_PIXELS decoded pixels"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    meaning = "a content type the API does not take"


class UnsupportedImageFormat(UnsupportedMediaType):
    code = "UNSUPPORTED_IMAGE_FORMAT"
    meaning = "not JPEG, PNG, WebP, GIF, BMP or TIFF"


class UndecodableImage(ServiceError):
    status = 422
    code = "UNDECODABLE_IMAGE"
    meaning = "a known format that cannot be decoded (truncated, corrupt)"


class UrlFetchFailed(ServiceError):
    """The URL was allowed but did not give an image (no answer, an HTTP error, a timeout)."""

    status = 422
    code = "URL_FETCH_FAILED"
    meaning = "an allowed url that gave no image"


# --- 500, 503 ---------------------------------------------------------------------------------


class IntegrityError(ServiceError):
    """Stored data that does not match what its manifest promises; never served."""

    code = "INTEGRITY_ERROR"
    meaning = "weights that fail their sha256 (never served), a broken manifest or catalog"


class ArchitectureUnavailable(ServiceError):
    """The manifest names a library, builder or engine this deployment cannot run."""

    code = "ARCHITECTURE_UNAVAILABLE"
    meaning = "a manifest this deployment cannot run"


class EngineUnavailable(ServiceError):
    """No engine installed here can run any artifact of the model (e.g. a torch-only model, no torch)."""

    code = "ENGINE_UNAVAILABLE"
    meaning = "a model published without model.onnx where torch is not installed (run the migrate command)"


class RetryLater(ServiceError):
    """Base of the 503s: the client should come back after ``Retry-After`` seconds."""

    status = 503
    code = "UNAVAILABLE"
    in_api = False
    meaning = "temporarily unavailable"

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class StorageUnavailable(RetryLater):
    """Cloud Storage did not answer in time."""

    code = "STORAGE_UNAVAILABLE"
    in_api = True
    meaning = "Cloud Storage did not answer; with Retry-After"


class ModelLoading(RetryLater):
    """A request waited for another request's load of the same model longer than allowed."""

    code = "MODEL_LOADING"
    in_api = True
    meaning = "the model is still loading after MODEL_LOAD_WAIT_SECONDS; with Retry-After"


class BackendUnavailable(RetryLater):
    """The local router could not reach a function (make dev only)."""

    code = "BACKEND_UNAVAILABLE"
    meaning = "the local router could not reach a function"


def all_error_classes() -> list[type[ServiceError]]:
    """Every error class, base first, in definition order (one per code)."""
    found, pending = [], [ServiceError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def api_error_classes() -> list[type[ServiceError]]:
    """The error classes the HTTP API can answer with, by status then code."""
    return sorted((cls for cls in all_error_classes() if cls.in_api), key=lambda cls: (cls.status, cls.code))


def shown_value(value: Any) -> str:
    """A short description of a client's value for a message: never a deep repr (containers can
    be nested a thousand levels, and repr() would recurse through all of them)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return repr(value if not isinstance(value, str) else value[:40])[:60]
    return type(value).__name__

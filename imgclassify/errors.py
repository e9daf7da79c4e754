"""The service's error hierarchy: every failure a client can see, with its HTTP meaning.

Each error carries a stable machine-readable ``code`` and an HTTP ``status``; the API
layer turns any of them into ``{"error": {"code", "message", "status"}}`` in one place
(:func:`imgclassify.http.error_response`). Messages say what was expected and what was found.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error with a JSON code and an HTTP status."""

    status = 500
    code = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """Extra response headers this error asks for."""
        return {}

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


class InvalidRequest(ServiceError):
    status = 400
    code = "INVALID_REQUEST"


class ForbiddenSource(ServiceError):
    """A ``gcs_uri`` or ``url`` that the configuration does not allow."""

    status = 403
    code = "FORBIDDEN_SOURCE"


class UnknownModel(ServiceError):
    status = 404
    code = "UNKNOWN_MODEL"


class UnknownVersion(ServiceError):
    status = 404
    code = "UNKNOWN_VERSION"


class NotFound(ServiceError):
    """A route, or an object named by the request, that does not exist."""

    status = 404
    code = "NOT_FOUND"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "METHOD_NOT_ALLOWED"

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(f"method {method} is not allowed here; use {', '.join(allowed)}")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class PayloadTooLarge(ServiceError):
    """Too many bytes, too many pixels or too many images."""

    status = 413
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(ServiceError):
    """A content type the API does not take, or an image format the decoder refuses."""

    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class UndecodableImage(ServiceError):
    status = 422
    code = "UNDECODABLE_IMAGE"


class StorageUnavailable(ServiceError):
    """Cloud Storage did not answer in time; the client should retry later."""

    status = 503
    code = "STORAGE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class IntegrityError(ServiceError):
    """Stored data that does not match what its manifest promises; never served."""

    status = 500
    code = "INTEGRITY_ERROR"


class PublishError(ServiceError):
    """A publish or remove that cannot go ahead (version exists, bad input, ...)."""

    status = 409
    code = "PUBLISH_CONFLICT"

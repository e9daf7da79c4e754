"""Turning an HTTP classify request into a :class:`ClassifyRequest`, whatever its body type.

Bodies: raw image bytes (``image/*`` or ``application/octet-stream``); ``multipart/form-data``
with one or more ``image`` file fields; JSON ``{"instances": [{"b64"} | {"gcs_uri"} | {"url"}]}``.
The model comes from the path, the ``model`` query parameter, or the body's ``model``
field; ``top_k`` from the query or the body. Uses werkzeug's request object, and python-multipart's
streaming parser for multipart bodies (:class:`MultipartForm`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from typing import Any

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request

from imgclassify.errors import (
    ConflictingModel,
    EmptyBody,
    InvalidBase64,
    InvalidJson,
    InvalidModelName,
    InvalidRequest,
    InvalidTopK,
    MissingImage,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
    shown_value,
)
from imgclassify.store.objects import split_object_uri
from imgclassify.top_k import parse_top_k

from .inputs import ClassifyRequest, ImageInput


def _choose_model(path_model: str | None, query_model: str | None, body_model: Any) -> str | None:
    if body_model not in (None, "") and not isinstance(body_model, str):
        raise InvalidModelName(f"model must be a string, found {type(body_model).__name__}")
    given = [m for m in (path_model, query_model, body_model) if m not in (None, "")]
    if len(set(given)) > 1:
        raise ConflictingModel(f"the request names different models: {', '.join(shown_value(m) for m in given)}")
    return given[0] if given else None


def decode_base64(value: str) -> bytes:
    """``value`` decoded as the standard library's ``b64decode(value, validate=True)`` decodes it
    (binascii.Error or ValueError when it does not): pybase64's SIMD decoder first, 60 times as
    fast (a 2.3 MB photo's base64: 0.13 against 7.5 ms); what it refuses, such as the excess padding
    the standard library lets through, is left to the standard library."""
    import pybase64  # here, not at the top: 2.4 ms of import that a start need not pay before serving

    try:
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(value, validate=True)


def _instance(index: int, item: Any) -> ImageInput:
    if not isinstance(item, dict):
        raise InvalidRequest(f"instances[{index}] must be an object, found {type(item).__name__}")
    keys = [key for key in ("b64", "gcs_uri", "url") if key in item]
    if len(keys) != 1:
        raise InvalidRequest(f"instances[{index}] needs exactly one of b64, gcs_uri or url")
    value = item[keys[0]]
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"instances[{index}].{keys[0]} must be a non-empty string")
    if keys[0] == "b64":
        try:
            return ImageInput(data=decode_base64(value))
        except (binascii.Error, ValueError):
            raise InvalidBase64(f"instances[{index}].b64 is not valid base64") from None
    if keys[0] == "gcs_uri":
        try:
            split_object_uri(value)
        except InvalidRequest as error:
            raise type(error)(f"instances[{index}].gcs_uri: {error.message}") from None
        return ImageInput(gcs_uri=value)
    return ImageInput(url=value)


# A multipart body holds at most this many parts, whatever their size (werkzeug's default limit).
MAX_MULTIPART_PARTS = 1000
# A body of unknown length (chunked), and a multipart body, is read this much at a time. Each read
# is a trip through the server's body reader (gunicorn's recv()s release and re-take the GIL, which
# under load can wait a switch interval), and werkzeug's own reads take 64 KB: a multipart 824 KB
# photo's request took 30.8 ms of CPU in 64 KB reads, 28.9 in these. A multipart body is never held
# twice, as its parts are kept.
BODY_READ_BYTES = 2**20


def read_body(request: Request) -> bytes:
    """The whole body of ``request`` (within its ``max_content_length``), in as few reads as the server
    allows: one read of the Content-Length (gunicorn then asks the socket for up to 1 MB at a time),
    else :data:`BODY_READ_BYTES` at a time. werkzeug's ``get_data`` reads 64 KB at a time: a raw
    2.3 MB photo's request took 52.7 ms of CPU and 48.1 ms (p50) that way, 47.4 and 44.4 this way."""
    length = request.content_length
    if length is None:
        return b"".join(body_chunks(request))
    body = request.stream.read(length)
    if len(body) < length:
        raise InvalidRequest(f"the body ended after {len(body)} of the {length} bytes its Content-Length gives")
    return body


def body_chunks(request: Request) -> Iterator[bytes]:
    """``request``'s body (within its ``max_content_length``), :data:`BODY_READ_BYTES` at a time."""
    while chunk := request.stream.read(BODY_READ_BYTES):
        yield chunk


class MultipartForm:
    """A multipart body's ``image`` files, in order, and its first ``model`` and ``top_k`` fields,
    read as werkzeug's form parser reads them (a part whose Content-Disposition has a filename is a
    file, one without is a field), from python-multipart's streaming parser. werkzeug's compiled
    two regular expressions around each request's new boundary and spooled a file over 500 KB to
    disk to read it back (parsing a 42 KB photo's body: 0.68-1.16 ms, here 0.12-0.19). Parts that
    are neither are skipped as they stream past; a part past ``max_images`` images or
    :data:`MAX_MULTIPART_PARTS` parts stops the parse with 413."""

    def __init__(self, max_images: int) -> None:
        self.images: list[ImageInput] = []
        self.fields: dict[str, str] = {}
        self.ended = False  # the closing boundary was read
        self._max_images = max_images
        self._parts = 0
        self._header = [b"", b""]
        self._disposition = b""
        self._name: str | None = None  # the current part's name, and whether it is a file
        self._file = False
        self._kept: list[bytes] | None = None  # the current part's data, if it is kept

    @classmethod
    def read(cls, request: Request, max_images: int) -> MultipartForm:
        """Parse ``request``'s multipart body (its stream, within the request's length limit)."""
        # imported here, not at the top: 3.3 ms that a start need not pay before serving
        from python_multipart.exceptions import FormParserError
        from python_multipart.multipart import MultipartParser

        boundary = request.mimetype_params.get("boundary")
        if not boundary:
            raise InvalidRequest("the multipart body's Content-Type names no boundary")
        form = cls(max_images)
        parser = MultipartParser(boundary, form._callbacks())
        try:
            for chunk in body_chunks(request):
                parser.write(chunk)
        except FormParserError as error:
            raise InvalidRequest(f"the multipart body cannot be parsed: {error}") from None
        if not form.ended:
            raise InvalidRequest("the multipart body ends before its closing boundary")
        return form

    def _callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_MULTIPART_PARTS:
            raise PayloadTooLarge(f"the multipart body has more than {MAX_MULTIPART_PARTS} parts")
        self._disposition, self._kept = b"", None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        name, value = self._header
        if name.strip().lower() == b"content-disposition":
            self._disposition = value
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        # werkzeug's reading of the header (python-multipart's drops an RFC 2231 filename*)
        params = parse_options_header(self._disposition.decode("latin-1"))[1]
        self._name, self._file = params.get("name"), "filename" in params
        if self._file and self._name == "image":
            if len(self.images) == self._max_images:
                raise TooManyImages(f"the request has more than {self._max_images} images; the limit is "
                                    f"{self._max_images}")
            self._kept = []
        elif not self._file and self._name in ("model", "top_k") and self._name not in self.fields:
            self._kept = []

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._kept is not None:
            self._kept.append(data[start:end])

    def _part_end(self) -> None:
        if self._kept is None:
            return
        value = b"".join(self._kept)
        if self._file:
            self.images.append(ImageInput(data=value))
        else:
            self.fields[self._name] = value.decode("utf-8", "replace")
        self._kept = None

    def _end(self) -> None:
        self.ended = True


def _parse_json(body: bytes, max_images: int) -> tuple[list[ImageInput], Any, Any]:
    try:
        payload = json.loads(body)
    except RecursionError:
        # json's C decoder recurses once per nesting level and stops at the recursion limit.
        raise InvalidJson("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidJson("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest(f"the JSON body must be an object, found {type(payload).__name__}")
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest('the JSON body needs "instances": a non-empty list of {"b64"}, {"gcs_uri"} or {"url"}')
    if len(instances) > max_images:  # before a million tiny instances are decoded one by one
        raise TooManyImages(f"the request has {len(instances)} images; the limit is {max_images}")
    return [_instance(i, item) for i, item in enumerate(instances)], payload.get("model"), payload.get("top_k")


def parse_classify_request(request: Request, *, path_model: str | None, max_bytes: int,
                           max_images: int) -> ClassifyRequest:
    """Parse and validate a classify request; raise 400, 413 or 415 service errors."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"the body has {request.content_length} bytes; the limit is {max_bytes}")
    request.max_content_length = max_bytes
    mimetype = request.mimetype
    body_model = body_top_k = None
    try:
        if mimetype == "multipart/form-data":
            form = MultipartForm.read(request, max_images)
            images = form.images
            if not images:
                raise MissingImage('the multipart body has no "image" file field')
            body_model, body_top_k = form.fields.get("model"), form.fields.get("top_k")
        else:
            body = read_body(request)
            if len(body) > max_bytes:
                raise PayloadTooLarge(f"the body has more than {max_bytes} bytes")
            if not body:
                raise EmptyBody("the request body is empty; send an image")
            if mimetype == "application/json":
                images, body_model, body_top_k = _parse_json(body, max_images)
            elif mimetype.startswith("image/") or mimetype == "application/octet-stream":
                images = [ImageInput(data=body)]
            else:
                raise UnsupportedMediaType(
                    f"content type {mimetype or '(none)'!r} is not accepted; send image/*, "
                    "application/octet-stream, multipart/form-data or application/json"
                )
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"the body has more than {max_bytes} bytes") from None
    except HTTPException as error:
        raise InvalidRequest(f"the body cannot be parsed: {error.description}") from None
    if len(images) > max_images:
        raise TooManyImages(f"the request has {len(images)} images; the limit is {max_images}")
    query_top_k = request.args.get("top_k")
    top_k = parse_top_k(body_top_k if body_top_k is not None else query_top_k)
    if query_top_k is not None and body_top_k is not None and parse_top_k(query_top_k) != top_k:
        raise InvalidTopK("top_k is given twice with different values")
    return ClassifyRequest(
        model=_choose_model(path_model, request.args.get("model"), body_model),
        top_k=top_k,
        images=tuple(images),
    )


def parse_normalize(value: str | None) -> bool:
    """``:embed``'s ``normalize`` query parameter: true (the default) or false."""
    if value is None or value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidRequest(f"normalize must be true or false, found {shown_value(value)}")

import base64
import binascii
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.filepost import encode_multipart_formdata
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from imgclassify.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from imgclassify.serving.request_parsing import (
    BODY_READ_BYTES,
    MAX_MULTIPART_PARTS,
    decode_base64,
    parse_classify_request,
)
from imgclassify.top_k import parse_top_k


def request(**kwargs) -> Request:
    return Request(EnvironBuilder(method="POST", path="/v1/classify", **kwargs).get_environ())


def parse(req: Request, path_model=None, max_bytes=1024, max_images=4):
    return parse_classify_request(req, path_model=path_model, max_bytes=max_bytes, max_images=max_images)


def test_raw_image_body_is_one_image_with_default_model_and_top_k():
    parsed = parse(request(data=b"\xff\xd8jpeg", content_type="image/jpeg"))

    assert [image.data for image in parsed.images] == [b"\xff\xd8jpeg"]
    assert parsed.model is None
    assert parsed.top_k == 5


def test_octet_stream_is_accepted_as_raw_image():
    assert parse(request(data=b"abc", content_type="application/octet-stream")).images[0].data == b"abc"


def test_model_and_top_k_come_from_the_query():
    parsed = parse(request(data=b"x", content_type="image/png", query_string={"model": "m@2", "top_k": "3"}))

    assert parsed.model == "m@2"
    assert parsed.top_k == 3


def test_path_model_is_used_and_a_different_query_model_conflicts():
    assert parse(request(data=b"x", content_type="image/png"), path_model="m").model == "m"
    with pytest.raises(InvalidRequest) as error:
        parse(request(data=b"x", content_type="image/png", query_string={"model": "other"}), path_model="m")
    assert error.value.code == "CONFLICTING_MODEL"


def test_multipart_takes_every_image_field_in_order():
    from io import BytesIO

    parsed = parse(request(data={"image": [(BytesIO(b"one"), "a.jpg"), (BytesIO(b"two"), "b.jpg")],
                                 "model": "m", "top_k": "2"}, content_type="multipart/form-data"))

    assert [image.data for image in parsed.images] == [b"one", b"two"]
    assert (parsed.model, parsed.top_k) == ("m", 2)


def test_multipart_without_image_field_is_a_bad_request():
    from io import BytesIO

    with pytest.raises(InvalidRequest) as error:
        parse(request(data={"file": (BytesIO(b"one"), "a.jpg")}, content_type="multipart/form-data"))
    assert error.value.code == "MISSING_IMAGE"


def multipart(parts: list[tuple[str, bool, bytes]], boundary: str = "b0und4ry") -> Request:
    """A multipart request of ``parts`` in order: (name, whether it is a file, content), encoded as
    requests (through urllib3) encodes one: werkzeug's test encoder leaves out the line break
    before the delimiter after an empty field, which RFC 2046 makes part of the delimiter."""
    fields = [(name, (f"{name}.bin", content) if is_file else content) for name, is_file, content in parts]
    body, content_type = encode_multipart_formdata(fields, boundary)
    return Request(EnvironBuilder(method="POST", path="/v1/classify", data=body,
                                  content_type=content_type).get_environ())


def written(body: bytes) -> Request:
    """A multipart request of ``body`` as written, its boundary ``b0und4ry``."""
    return request(data=body, content_type="multipart/form-data; boundary=b0und4ry")


def werkzeug_reading(req: Request) -> tuple[list[bytes], str | None, str | None]:
    return ([part.read() for part in req.files.getlist("image")], req.form.get("model"), req.form.get("top_k"))


# What parts may hold: anything but their body's delimiter (a sender picks a boundary its parts do
# not contain), including most of one.
PART_CONTENT = st.one_of(st.binary(max_size=300),
                         st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\r\n--b0und4r", b"--b0und4r--\r\n",
                                          b"b0und4ry", "ünï".encode(), b"7"]))
PART_CONTENT = PART_CONTENT.filter(lambda content: b"--b0und4ry" not in content)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["image", "model", "top_k", "file", "name"]), st.booleans(), PART_CONTENT),
                min_size=1, max_size=6))
def test_multipart_bodies_are_read_as_werkzeugs_form_parser_reads_them(parts):
    images, model, top_k = werkzeug_reading(multipart(parts))
    try:
        parsed = parse(multipart(parts), max_bytes=2**20, max_images=8)
    except InvalidRequest as error:  # a missing image, or a model or top_k the request may not have
        assert error.status == 400
        assert not images or error.code in ("INVALID_MODEL_NAME", "INVALID_TOP_K")
        return
    assert [image.data for image in parsed.images] == images
    assert parsed.model == (model or None)
    assert parsed.top_k == parse_top_k(top_k)


def test_a_multipart_photo_over_several_reads_is_read_whole_with_a_near_delimiter_across_a_read():
    start = multipart([("image", True, b"")]).get_data().index(b"\r\n\r\n") + 4  # where the photo begins
    near = b"\r\n--b0und4r"  # all of the delimiter but its last byte
    before = BODY_READ_BYTES - start - 5  # the first read of the stream ends inside it
    photo = bytes(range(256)) * (before // 256) + b"x" * (before % 256) + near + bytes(range(256)) * 5000

    parsed = parse(multipart([("image", True, photo), ("image", True, b"two")]), max_bytes=4 * BODY_READ_BYTES)

    assert [image.data for image in parsed.images] == [photo, b"two"]


def test_a_multipart_file_named_only_by_an_rfc_2231_filename_is_an_image():
    body = (b"--b0und4ry\r\nContent-Disposition: form-data; name=\"image\"; filename*=UTF-8''ph%C3%B6to.jpg\r\n"
            b"\r\nphoto\r\n--b0und4ry--\r\n")

    assert [image.data for image in parse(written(body)).images] == [b"photo"]


def test_a_multipart_body_cut_before_its_closing_boundary_is_a_bad_request():
    body = b"--b0und4ry\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\nhalf a photo"

    with pytest.raises(InvalidRequest) as error:
        parse(written(body))
    assert (error.value.status, error.value.code) == (400, "INVALID_REQUEST")
    assert "closing boundary" in error.value.message


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary="])
def test_a_multipart_body_without_a_boundary_is_a_bad_request(content_type):
    req = Request(EnvironBuilder(method="POST", path="/v1/classify", data=b"--x\r\n",
                                 content_type=content_type).get_environ())

    with pytest.raises(InvalidRequest) as error:
        parse(req)
    assert "boundary" in error.value.message


def test_a_malformed_multipart_body_is_a_bad_request_naming_the_parse_error():
    body = b"--b0und4ry\r\nno colon in this header\r\n\r\nx\r\n--b0und4ry--\r\n"

    with pytest.raises(InvalidRequest) as error:
        parse(written(body))
    assert error.value.message.startswith("the multipart body cannot be parsed")


def test_multipart_images_past_the_limit_are_413_too_many_images():
    with pytest.raises(PayloadTooLarge) as error:
        parse(multipart([("image", True, b"x")] * 5), max_images=4)
    assert error.value.code == "TOO_MANY_IMAGES"


def test_a_multipart_body_of_more_parts_than_allowed_is_413_however_small():
    parts = [("image", True, b"x")] + [("note", False, b"")] * MAX_MULTIPART_PARTS

    with pytest.raises(PayloadTooLarge) as error:
        parse(multipart(parts), max_bytes=2**20)
    assert f"more than {MAX_MULTIPART_PARTS} parts" in error.value.message


def stdlib_base64(value: str):
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        return type(error)


def ours(value: str):
    try:
        return decode_base64(value)
    except (binascii.Error, ValueError) as error:
        return type(error)


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(st.one_of(st.binary(max_size=200).map(lambda data: base64.b64encode(data).decode()),
                 st.text(alphabet="AQgw+/=aZ09 \n-_é", max_size=40)))
def test_base64_is_decoded_exactly_as_the_standard_library_decodes_it(value):
    assert ours(value) == stdlib_base64(value)


def test_base64_with_excess_padding_is_accepted_as_the_standard_library_accepts_it():
    assert decode_base64("aW1n==") == b"img"


def test_json_instances_decode_base64_and_keep_uris():
    body = {"instances": [{"b64": base64.b64encode(b"img").decode()}, {"gcs_uri": "gs://bkt/o.jpg"},
                          {"url": "https://example.com/x.jpg"}], "top_k": 7, "model": "m"}
    parsed = parse(request(data=json.dumps(body), content_type="application/json"))

    assert parsed.images[0].data == b"img"
    assert parsed.images[1].gcs_uri == "gs://bkt/o.jpg"
    assert parsed.images[2].url == "https://example.com/x.jpg"
    assert (parsed.model, parsed.top_k) == ("m", 7)


@pytest.mark.parametrize("body, code", [
    ("not json", "INVALID_JSON"),
    ("[1, 2]", "INVALID_REQUEST"),
    ("{}", "INVALID_REQUEST"),
    ('{"instances": []}', "INVALID_REQUEST"),
    ('{"instances": "x"}', "INVALID_REQUEST"),
    ('{"instances": [1]}', "INVALID_REQUEST"),
    ('{"instances": [{"b64": "a", "gcs_uri": "gs://b/o"}]}', "INVALID_REQUEST"),
    ('{"instances": [{"b64": "!!!not base64"}]}', "INVALID_BASE64"),
    ('{"instances": [{"b64": 5}]}', "INVALID_REQUEST"),
    ('{"instances": [{"gcs_uri": "http://x/y"}]}', "INVALID_GCS_URI"),
    ('{"instances": [{"b64": "aW1n"}], "model": 3}', "INVALID_MODEL_NAME"),
    ('{"instances": [{"b64": "aW1n"}], "top_k": "abc"}', "INVALID_TOP_K"),
])
def test_malformed_json_bodies_are_bad_requests_with_a_precise_code(body, code):
    with pytest.raises(InvalidRequest) as error:
        parse(request(data=body, content_type="application/json"))
    assert error.value.code == code
    assert error.value.status == 400


def test_empty_body_is_a_bad_request():
    with pytest.raises(InvalidRequest) as error:
        parse(request(data=b"", content_type="image/jpeg"))
    assert error.value.code == "EMPTY_BODY"


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", ""])
def test_unsupported_content_types_are_415(content_type):
    with pytest.raises(UnsupportedMediaType):
        parse(request(data=b"data", content_type=content_type or None))


def test_body_over_the_byte_limit_is_413():
    with pytest.raises(PayloadTooLarge):
        parse(request(data=b"x" * 2000, content_type="image/jpeg"))


class CountedReads(io.BytesIO):
    """A server's body stream that counts the reads asked of it."""

    reads = 0

    def read(self, size=-1):
        self.reads += 1
        return super().read(size)

    def readinto(self, buffer):
        self.reads += 1
        return super().readinto(buffer)


def served(body: bytes, *, length: int | None, content_type: str = "image/jpeg") -> Request:
    """A request as a server passes it on: ``length`` its Content-Length, None for a chunked body."""
    environ = EnvironBuilder(method="POST", path="/v1/classify", content_type=content_type).get_environ()
    environ.update({"wsgi.input": CountedReads(body), "wsgi.input_terminated": length is None})
    environ.pop("CONTENT_LENGTH", None)
    if length is not None:
        environ["CONTENT_LENGTH"] = str(length)
    return Request(environ)


def test_a_body_with_a_content_length_is_asked_of_the_server_in_one_read():
    photo = bytes(range(256)) * 12_000  # 3 MB: werkzeug's get_data asked for it in 47 reads of 64 KB
    req = served(photo, length=len(photo))

    assert parse(req, max_bytes=2**22).images[0].data == photo
    assert req.environ["wsgi.input"].reads == 1


def test_a_chunked_body_is_read_whole_a_megabyte_at_a_time():
    photo = bytes(range(256)) * 12_000
    req = served(photo, length=None)

    assert parse(req, max_bytes=2**22).images[0].data == photo
    assert req.environ["wsgi.input"].reads == -(-len(photo) // BODY_READ_BYTES) + 1  # and the empty one at its end


def test_a_chunked_body_over_the_byte_limit_is_413():
    with pytest.raises(PayloadTooLarge):
        parse(served(b"x" * 5000, length=None), max_bytes=1024)


def test_a_body_shorter_than_its_content_length_is_a_bad_request_saying_so():
    with pytest.raises(InvalidRequest) as error:
        parse(served(b"x" * 100, length=500))
    assert error.value.status == 400
    assert "ended after 100 of the 500 bytes" in error.value.message


def test_multipart_over_the_byte_limit_is_413():
    from io import BytesIO

    with pytest.raises(PayloadTooLarge):
        parse(request(data={"image": (BytesIO(b"x" * 5000), "a.jpg")}, content_type="multipart/form-data"))


def test_more_images_than_allowed_is_413_too_many_images():
    body = {"instances": [{"b64": "aW1n"}] * 5}
    with pytest.raises(PayloadTooLarge) as error:
        parse(request(data=json.dumps(body), content_type="application/json"))
    assert error.value.code == "TOO_MANY_IMAGES"


@pytest.mark.parametrize("value", [0, -1, 101, "abc", "1.5", True, 2.0, None.__class__])
def test_top_k_outside_1_to_100_or_not_whole_is_rejected(value):
    with pytest.raises(InvalidRequest) as error:
        parse_top_k(value)
    assert error.value.code == "INVALID_TOP_K"


@pytest.mark.parametrize("value, expected", [(None, 5), (1, 1), ("100", 100), (42, 42)])
def test_top_k_accepts_whole_numbers_from_1_to_100(value, expected):
    assert parse_top_k(value) == expected


# --- Hostile values (issue 12) -------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,
    '{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"instances": [' + '{"b64": ' * 50_000 + "1" + "}" * 50_000 + "]}",
])
def test_json_nested_deeper_than_the_decoder_recurses_is_invalid_json_not_a_crash(body):
    with pytest.raises(InvalidRequest) as error:
        parse(request(data=body, content_type="application/json"), max_bytes=2**20)
    assert error.value.code == "INVALID_JSON"
    assert "nested too deeply" in error.value.message


@pytest.mark.parametrize("field", ["top_k", "model"])
def test_a_deeply_nested_value_in_a_field_is_reported_by_type_without_recursing(field):
    nested = "[" * 950 + "]" * 950
    body = '{"instances": [{"b64": "aW1n"}], "' + field + '": ' + nested + '}'

    with pytest.raises(InvalidRequest) as error:
        parse(request(data=body, content_type="application/json"), max_bytes=2**20)

    assert error.value.code == ("INVALID_TOP_K" if field == "top_k" else "INVALID_MODEL_NAME")
    assert "list" in error.value.message


@pytest.mark.parametrize("uri", ["gs://", "gs:///x", "gs://bkt", "gs://bkt/", "gs://B/x", "gs://a/x",
                                 "gs://bkt/a\nb", "gs://bkt/\ud800", "gs://bkt/" + "o" * 1025, "gs://bkt/..",
                                 "gs:/bkt/x", "GS://bkt/x"])
def test_a_gcs_uri_that_names_no_object_is_invalid_gcs_uri(uri):
    body = json.dumps({"instances": [{"gcs_uri": uri}]})

    with pytest.raises(InvalidRequest) as error:
        parse(request(data=body, content_type="application/json"), max_bytes=2**20)

    assert error.value.code == "INVALID_GCS_URI"
    assert error.value.message.startswith("instances[0].gcs_uri")


@pytest.mark.parametrize("value", ["1_0", "\u0663", " 5 x", "9" * 5000, "0x10", "5.0"])
def test_top_k_strings_that_python_would_stretch_into_a_number_are_rejected(value):
    with pytest.raises(InvalidRequest) as error:
        parse_top_k(value)
    assert error.value.code == "INVALID_TOP_K"


def test_too_many_json_instances_are_refused_before_any_is_decoded():
    body = '{"instances": [' + ",".join(['{"b64": "!!"}'] * 5) + "]}"  # invalid base64: decoding would fail first

    with pytest.raises(PayloadTooLarge) as error:
        parse(request(data=body, content_type="application/json"))

    assert error.value.code == "TOO_MANY_IMAGES"

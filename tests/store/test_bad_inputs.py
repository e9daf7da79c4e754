"""Hostile and awkward inputs: each gets its documented answer, never a 5xx, and the same
instance keeps serving normal requests afterwards. Plus property tests on the parser and
the decoder: arbitrary bytes and JSON never produce a 5xx or an unhandled exception."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from imgclassify.errors import ServiceError
from imgclassify.imaging.decode import decode_image
from imgclassify.serving.request_parsing import parse_classify_request
from tests.support.apps import client_for
from tests.support.bad_inputs import cases, fresh
from tests.support.photos import CAT_INDICES, cat_jpeg, encode

MAX_REQUEST_MB = 2
MAX_IMAGES = 8
CASES = cases(MAX_REQUEST_MB * 2**20, MAX_IMAGES, forbidden_bucket="not-allowed")
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(models_bucket, emulator):
    emulator.create_bucket("allowed-bucket")
    return client_for(models_bucket, MAX_REQUEST_MB=str(MAX_REQUEST_MB), MAX_IMAGES_PER_REQUEST=str(MAX_IMAGES),
                      ALLOWED_GCS_BUCKETS="allowed-bucket", PRELOAD_DEFAULT_MODEL="true")


@pytest.mark.parametrize("name, path, request_kwargs, status, expected", CASES, ids=[c[0] for c in CASES])
def test_every_bad_input_gets_its_documented_answer(client, name, path, request_kwargs, status, expected):
    response = client.post(path, **fresh(request_kwargs))

    assert response.status_code == status, response.data[:300]
    body = response.get_json()
    if status == 200:
        predictions = body["results"][0]["predictions"]
        assert predictions and all(0 <= p["score"] <= 1 for p in predictions)
        if expected == "cat":
            assert predictions[0]["index"] in CAT_INDICES, predictions[:3]
    else:
        assert body["error"]["code"] == expected
        assert body["error"]["status"] == status
        assert "Traceback" not in body["error"]["message"]
        assert "/work/" not in body["error"]["message"] and ".py" not in body["error"]["message"]


def test_the_instance_keeps_answering_normal_requests_after_the_whole_corpus(client):
    for _, path, request_kwargs, _, _ in CASES:
        client.post(path, **fresh(request_kwargs))

    response = client.post("/v1/classify", data=cat_jpeg(), content_type="image/jpeg")

    assert response.status_code == 200
    assert response.get_json()["results"][0]["predictions"][0]["index"] in CAT_INDICES


@PROPERTY_SETTINGS
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_escape_the_decoder_as_anything_but_a_service_error(data):
    try:
        image = decode_image(data, max_pixels=10_000_000, min_side=224)
    except ServiceError as error:
        assert 400 <= error.status < 500
    else:
        assert image.mode == "RGB"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
instance_like = st.fixed_dictionaries({}, optional={
    "b64": st.text(max_size=40) | st.integers(), "gcs_uri": st.text(max_size=30), "url": st.text(max_size=30)})
classify_bodies = st.fixed_dictionaries({}, optional={
    "instances": st.lists(instance_like | json_values, max_size=5) | json_values,
    "top_k": json_values, "model": json_values})


@PROPERTY_SETTINGS
@given(st.one_of(json_values, classify_bodies), st.sampled_from(["application/json", "image/png", "text/plain"]))
def test_arbitrary_json_never_escapes_the_parser_as_anything_but_a_client_error(body, content_type):
    request = Request(EnvironBuilder(method="POST", path="/v1/classify", data=json.dumps(body),
                                     content_type=content_type).get_environ())
    try:
        parse_classify_request(request, path_model=None, max_bytes=2**20, max_images=8)
    except ServiceError as error:
        assert 400 <= error.status < 500


@PROPERTY_SETTINGS
@given(st.binary(max_size=2048), st.sampled_from(["image/jpeg", "application/json", "multipart/form-data",
                                                    "application/octet-stream", ""]),
       st.text(alphabet=st.characters(codec="ascii"), max_size=30))
def test_arbitrary_requests_over_the_app_never_get_a_5xx(client, data, content_type, query):
    response = client.post("/v1/classify", query_string={"top_k": query, "model": query[:10]} if query else None,
                           data=data, content_type=content_type or None)

    assert response.status_code < 500, response.data[:300]
    assert response.content_type == "application/json"


# --- Every field's value space (issue 12) ----------------------------------------------------------

def parse_json_body(body: str):
    request = Request(EnvironBuilder(method="POST", path="/v1/classify", data=body,
                                     content_type="application/json").get_environ())
    return parse_classify_request(request, path_model=None, max_bytes=4 * 2**20, max_images=8)


def client_error_or_value(call, *args):
    """``call(*args)``'s value, or None when it raised a 4xx service error; anything else fails."""
    try:
        return call(*args)
    except ServiceError as error:
        assert 400 <= error.status < 500, error
        return None


gcs_uris = st.one_of(
    st.text(max_size=40),
    st.builds(lambda bucket, name: f"gs://{bucket}/{name}", st.text(max_size=70), st.text(max_size=40)),
    st.sampled_from(["gs://", "gs:///x", "gs://bkt", "gs://bkt/", "gs://a/x", "gs://bkt/..", "gs://bkt/\ud800",
                     "gs://bkt/a\nb", "gs://" + "b" * 300 + "/x", "gs://bkt/" + "o" * 2000]),
)


@PROPERTY_SETTINGS
@given(gcs_uris)
def test_any_gcs_uri_is_a_400_or_names_a_bucket_and_an_object(uri):
    parsed = client_error_or_value(parse_json_body, json.dumps({"instances": [{"gcs_uri": uri}]}))
    if parsed is not None:
        bucket, _, name = parsed.images[0].gcs_uri[5:].partition("/")
        assert 3 <= len(bucket) <= 222 and name


urls = st.one_of(
    st.text(max_size=60),
    st.builds(lambda scheme, host, rest: f"{scheme}://{host}{rest}", st.sampled_from(["https", "http", "ftp", ""]),
              st.text(max_size=30), st.text(max_size=30)),
    st.sampled_from(["https://[::1", "https://a..b/x", "https://x/a b", "https://\u00e9t\u00e9.example/x",
                     "https://" + "a" * 64 + ".example/", "https://h:99999/", "https://user@h/", "https://h/\x01"]),
)


@PROPERTY_SETTINGS
@given(urls)
def test_any_url_is_refused_with_a_4xx_or_checked_to_an_address_without_reaching_anything(url):
    from imgclassify.serving.url_fetch import UrlFetcher, UrlPolicy

    # A fixed public answer instead of DNS: what is under test is the parsing and the checks.
    fetcher = UrlFetcher(UrlPolicy(schemes=("https", "http")), resolver=lambda host, port: ["93.184.216.34"])
    target = client_error_or_value(fetcher.check, url)
    if target is not None:
        assert target.host.isascii() and target.path.isascii() and " " not in target.path


model_refs = st.one_of(st.text(max_size=120), st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,70}(@.{0,40})?", fullmatch=True))


@PROPERTY_SETTINGS
@given(model_refs)
def test_any_model_reference_is_a_valid_name_and_version_or_a_400_naming_which_part(ref):
    from imgclassify.store.catalog import parse_model_ref

    try:
        name, version = parse_model_ref(ref)
    except ServiceError as error:
        assert error.code in ("INVALID_MODEL_NAME", "INVALID_MODEL_VERSION")
        if error.code == "INVALID_MODEL_VERSION":
            assert "@" in ref
    else:
        assert ref.startswith(name) and (version is None or ref.endswith("@" + version))


@PROPERTY_SETTINGS
@given(st.one_of(json_values, st.integers(), st.text(max_size=30), st.floats()))
def test_any_top_k_value_is_a_whole_number_from_1_to_100_or_invalid_top_k(value):
    from imgclassify.top_k import parse_top_k

    try:
        top_k = parse_top_k(value)
    except ServiceError as error:
        assert error.code == "INVALID_TOP_K"
    else:
        assert 1 <= top_k <= 100 and (value is None or int(value) == top_k)


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(st.integers(min_value=0, max_value=120_000), st.sampled_from(["[", "{\"a\":"]),
       st.sampled_from(["top", "instances", "instance", "top_k", "model"]))
def test_any_nesting_depth_anywhere_is_a_400_never_a_recursion_error(depth, opener, where):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    body = {"top": nested, "instances": '{"instances": ' + nested + "}",
            "instance": '{"instances": [' + nested + "]}",
            "top_k": '{"instances": [{"b64": "aW1n"}], "top_k": ' + nested + "}",
            "model": '{"instances": [{"b64": "aW1n"}], "model": ' + nested + "}"}[where]

    client_error_or_value(parse_json_body, body)


exif_entries = st.lists(st.tuples(
    st.sampled_from([0x0112, 0x0132, 0x011A, 0x011B, 0x0128, 0x02BC, 0x8769, 0x8825, 0x010F, 0x9003, 0xFFFF]),
    st.integers(min_value=0, max_value=13),       # TIFF types, 0 and 13 invalid
    st.integers(min_value=0, max_value=5),        # count
    st.binary(max_size=16),
), max_size=6, unique_by=lambda entry: entry[0])


@PROPERTY_SETTINGS
@given(exif_entries, st.integers(min_value=1, max_value=8))
def test_any_exif_block_leaves_the_photo_decodable_and_a_readable_orientation_applied(entries, orientation):
    from tests.support.bad_inputs import exif_block

    orientation_entry = (0x0112, 3, 1, struct.pack("<H", orientation))
    block = exif_block(orientation_entry, *[entry for entry in entries if entry[0] != 0x0112])
    data = encode(np.zeros((20, 40, 3), np.uint8), "JPEG", exif=block)

    image = decode_image(data, max_pixels=10_000_000)

    assert image.size == ((20, 40) if orientation >= 5 else (40, 20))

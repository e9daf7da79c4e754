"""Hostile and awkward inputs: each gets its documented answer, never a 5xx, and the same
instance keeps serving normal requests afterwards. Plus property tests on the parser and
the decoder: arbitrary bytes and JSON never produce a 5xx or an unhandled exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from imgclassify.errors import ServiceError
from imgclassify.images import decode_image
from imgclassify.request_parsing import parse_classify_request
from tests.apps import client_for
from tests.bad_inputs import cases, fresh
from tests.photos import CAT_INDICES, cat_jpeg

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

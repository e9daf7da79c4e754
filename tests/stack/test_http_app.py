"""The real functions-framework apps, built with create_app and driven by their test client.

Routing, error handlers and the whole package run for real against the storage emulator.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import functions_framework
import numpy as np
import pytest

from imgclassify.store.objects import GcsStore
from tests.support.photos import CAT_INDICES, ESPRESSO_INDEX, cat_jpeg, coffee_jpeg, encode

REPO = Path(__file__).resolve().parents[2]
ALLOWED_BUCKET = "photos-allowed-http"


@pytest.fixture(scope="module")
def function_env(models_bucket, emulator):
    emulator.create_bucket(ALLOWED_BUCKET)
    GcsStore(ALLOWED_BUCKET).write("cats/chelsea.jpg", cat_jpeg())
    env = {"MODEL_STORE": f"gs://{models_bucket}", "ALLOWED_GCS_BUCKETS": ALLOWED_BUCKET,
           "CORS_ALLOWED_ORIGINS": "https://app.example", "MAX_IMAGES_PER_REQUEST": "4",
           "MAX_REQUEST_MB": "2", "CATALOG_TTL_SECONDS": "60", "GOOGLE_CLOUD_PROJECT": "demo",
           "URL_FETCH_SCHEMES": "http,https", "URL_ALLOWED_NETWORKS": "127.0.0.1/32"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def client_for(function: str):
    source = REPO / "functions" / function / "main.py"
    return functions_framework.create_app(target=function, source=str(source)).test_client()


@pytest.fixture(scope="module")
def classify(function_env):
    return client_for("classify")


@pytest.fixture(scope="module")
def list_models(function_env):
    return client_for("list_models")


def error_of(response) -> dict:
    assert response.content_type == "application/json"
    return response.get_json()["error"]


def test_list_models_names_the_three_bundled_models_with_lite0_as_default(list_models):
    response = list_models.get("/v1/models")

    body = response.get_json()
    assert response.status_code == 200
    assert [m["name"] for m in body["models"]] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert body["default_model"] == "efficientnet_lite0"
    lite0 = body["models"][0]
    assert lite0["default"] is True
    assert lite0["input_size"] == [3, 224, 224]
    assert lite0["num_classes"] == 1000
    assert lite0["weights_bytes"] > 10_000_000
    assert lite0["random_init"] is False


def test_list_models_is_cacheable_and_answers_304_to_a_matching_etag(list_models):
    first = list_models.get("/v1/models")
    again = list_models.get("/v1/models", headers={"If-None-Match": first.headers["ETag"]})

    assert "max-age=60" in first.headers["Cache-Control"]
    assert again.status_code == 304


def test_describe_model_gives_labels_preprocessing_and_versions(list_models):
    body = list_models.get("/v1/models/efficientnet_lite1").get_json()

    assert body["name"] == "efficientnet_lite1"
    assert len(body["labels"]) == 1000
    assert body["preprocessing"]["crop_size"] == 240
    assert body["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert [v["version"] for v in body["versions"]] == ["1"]


def test_describe_unknown_model_is_404_unknown_model(list_models):
    response = list_models.get("/v1/models/no_such_model")

    assert response.status_code == 404
    assert error_of(response)["code"] == "UNKNOWN_MODEL"


def test_classify_raw_cat_photo_puts_a_cat_first(classify):
    response = classify.post("/v1/models/efficientnet_lite0:classify", data=cat_jpeg(), content_type="image/jpeg")

    body = response.get_json()
    assert response.status_code == 200
    assert body["model"] == {"name": "efficientnet_lite0", "version": "1", "random_init": False}
    predictions = body["results"][0]["predictions"]
    assert len(predictions) == 5
    assert predictions[0]["index"] in CAT_INDICES
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert set(body["timing_ms"]) == {"model_load", "decode_preprocess", "inference", "total"}


def test_classify_multipart_returns_one_result_per_image_in_order(classify):
    response = classify.post(
        "/v1/classify?model=efficientnet_lite0&top_k=1",
        data={"image": [(io.BytesIO(coffee_jpeg()), "coffee.jpg"),
                        (io.BytesIO(cat_jpeg()), "cat.jpg")]},
        content_type="multipart/form-data",
    )

    results = response.get_json()["results"]
    assert response.status_code == 200
    assert results[0]["predictions"][0]["index"] == ESPRESSO_INDEX
    assert results[1]["predictions"][0]["index"] in CAT_INDICES
    assert all(len(r["predictions"]) == 1 for r in results)


def test_classify_json_base64_with_model_version_in_body(classify):
    body = {"instances": [{"b64": base64.b64encode(coffee_jpeg()).decode()}],
            "model": "efficientnet_lite0@1", "top_k": 3}
    response = classify.post("/v1/classify", json=body)

    assert response.status_code == 200
    assert response.get_json()["results"][0]["predictions"][0]["label"] == "espresso"


def test_classify_gcs_uri_from_an_allowed_bucket(classify):
    body = {"instances": [{"gcs_uri": f"gs://{ALLOWED_BUCKET}/cats/chelsea.jpg"}]}
    response = classify.post("/v1/classify", json=body)

    assert response.status_code == 200
    assert response.get_json()["results"][0]["predictions"][0]["index"] in CAT_INDICES


@pytest.mark.parametrize("uri, status, code", [
    ("gs://some-other-bucket/x.jpg", 403, "FORBIDDEN_SOURCE"),
    (f"gs://{ALLOWED_BUCKET}/missing.jpg", 404, "OBJECT_NOT_FOUND"),
])
def test_classify_gcs_uri_outside_allowed_buckets_or_missing_is_refused(classify, uri, status, code):
    response = classify.post("/v1/classify", json={"instances": [{"gcs_uri": uri}]})

    assert response.status_code == status
    assert error_of(response)["code"] == code


@pytest.mark.parametrize("url", ["http://169.254.169.254/computeMetadata/v1/", "http://10.0.0.1/x.jpg",
                                 "http://[::ffff:169.254.169.254]/x", "http://0177.0.0.2:8080/x.jpg"])
def test_url_input_to_private_or_metadata_addresses_is_refused(classify, url):
    response = classify.post("/v1/classify", json={"instances": [{"url": url}]})

    assert response.status_code == 403
    assert error_of(response)["code"] == "FORBIDDEN_SOURCE"


def test_url_input_from_an_allowed_server_is_classified(classify):
    photo = cat_jpeg()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/chelsea.jpg"
        response = classify.post("/v1/classify", json={"instances": [{"url": url}]})
    finally:
        server.shutdown()

    assert response.status_code == 200
    assert response.get_json()["results"][0]["predictions"][0]["index"] in CAT_INDICES


@pytest.mark.parametrize("path, status, code", [
    ("/v1/models/nope:classify", 404, "UNKNOWN_MODEL"),
    ("/v1/models/efficientnet_lite0@9:classify", 404, "UNKNOWN_VERSION"),
    ("/v1/models/..%2Fetc:classify", 400, "INVALID_MODEL_NAME"),
    ("/v1/models/%2e%2e:classify", 400, "INVALID_MODEL_NAME"),
    ("/v1/models/Caf%C3%A9:classify", 400, "INVALID_MODEL_NAME"),
    ("/v1/models/" + "a" * 300 + ":classify", 400, "INVALID_MODEL_NAME"),
    ("/v1/classify?top_k=0", 400, "INVALID_TOP_K"),
    ("/v1/classify?top_k=101", 400, "INVALID_TOP_K"),
])
def test_bad_model_references_and_top_k_get_json_errors(classify, path, status, code):
    response = classify.post(path, data=cat_jpeg(), content_type="image/jpeg")

    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert error_of(response)["status"] == status


@pytest.mark.parametrize("data, content_type, status, code", [
    (b"hello, I am text", "image/jpeg", 415, "UNSUPPORTED_IMAGE_FORMAT"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415, "UNSUPPORTED_IMAGE_FORMAT"),
    (b"hello", "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
    (b"", "image/jpeg", 400, "EMPTY_BODY"),
    (None, "truncated", 422, "UNDECODABLE_IMAGE"),
    (b"x" * (3 * 2**20), "image/jpeg", 413, "PAYLOAD_TOO_LARGE"),
])
def test_bad_bodies_get_the_documented_status_and_code(classify, data, content_type, status, code):
    if content_type == "truncated":
        data, content_type = cat_jpeg()[:5000], "image/jpeg"
    response = classify.post("/v1/classify", data=data, content_type=content_type)

    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_a_bad_image_in_a_batch_names_its_index(classify):
    body = {"instances": [{"b64": base64.b64encode(cat_jpeg()).decode()},
                          {"b64": base64.b64encode(b"not an image").decode()}]}
    response = classify.post("/v1/classify", json=body)

    assert response.status_code == 415
    assert error_of(response)["message"].startswith("image 1:")


def test_too_many_images_is_413(classify):
    tiny = base64.b64encode(encode(np.zeros((8, 8, 3), "uint8"), "PNG")).decode()
    response = classify.post("/v1/classify", json={"instances": [{"b64": tiny}] * 5})

    assert response.status_code == 413
    assert error_of(response)["code"] == "TOO_MANY_IMAGES"


def test_wrong_method_is_405_with_allow_header(classify, list_models):
    wrong_classify = classify.get("/v1/classify")
    wrong_list = list_models.post("/v1/models")

    assert wrong_classify.status_code == 405
    assert wrong_classify.headers["Allow"] == "POST, OPTIONS"
    assert error_of(wrong_list)["code"] == "METHOD_NOT_ALLOWED"


def test_a_route_of_the_other_function_is_404(classify, list_models):
    assert classify.get("/v1/models").status_code == 404
    assert list_models.post("/v1/classify", data=b"x").status_code == 404


def test_cors_preflight_allows_configured_origin_only(classify):
    allowed = classify.options("/v1/classify", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    other = classify.options("/v1/classify", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})

    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert "X-Api-Key" in allowed.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Origin" not in other.headers


def test_errors_carry_cors_headers_so_browsers_can_read_them(classify):
    response = classify.post("/v1/models/nope:classify", data=b"x", content_type="image/jpeg",
                             headers={"Origin": "https://app.example"})

    assert response.status_code == 404
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_each_request_logs_one_json_line_with_trace_model_and_latency(classify, capsys):
    classify.post("/v1/classify", data=cat_jpeg(), content_type="image/jpeg",
                  headers={"X-Cloud-Trace-Context": "abc123def456/789;o=1"})

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "httpRequest" in line]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["severity"] == "INFO"
    assert entry["httpRequest"]["status"] == 200
    assert entry["httpRequest"]["latency"].endswith("s")
    assert entry["logging.googleapis.com/trace"] == "projects/demo/traces/abc123def456"
    assert entry["model"] == "efficientnet_lite0"
    assert entry["cold"] is False


# --- The contract and the default model (issue 12) ---------------------------------------------

def test_list_models_serves_the_openapi_document_cacheably_and_classify_does_not(list_models, classify):
    from imgclassify.serving.contract import openapi_document

    response = list_models.get("/v1/openapi.json")
    again = list_models.get("/v1/openapi.json", headers={"If-None-Match": response.headers["ETag"]})

    assert response.status_code == 200
    assert response.get_json() == openapi_document()
    assert again.status_code == 304
    assert classify.get("/v1/openapi.json").status_code == 404
    assert error_of(list_models.post("/v1/openapi.json"))["code"] == "METHOD_NOT_ALLOWED"


def test_with_default_model_set_the_listing_puts_that_model_first_and_alone_marked_default(models_bucket):
    from tests.support.apps import client_for as app_client

    client = app_client(models_bucket, "list_models", DEFAULT_MODEL="efficientnet_lite2")

    body = client.get("/v1/models").get_json()
    described = client.get("/v1/models/efficientnet_lite2").get_json()
    other = client.get("/v1/models/efficientnet_lite0").get_json()

    assert body["default_model"] == "efficientnet_lite2"
    assert [m["name"] for m in body["models"]] == ["efficientnet_lite2", "efficientnet_lite0", "efficientnet_lite1"]
    assert [m["default"] for m in body["models"]] == [True, False, False]
    assert described["default"] is True and other["default"] is False


def test_a_malformed_version_is_invalid_model_version_not_invalid_model_name(classify):
    for path in ("/v1/models/efficientnet_lite0@..:classify", "/v1/classify?model=efficientnet_lite0@-1"):
        response = classify.post(path, data=cat_jpeg(), content_type="image/jpeg")

        assert response.status_code == 400
        assert error_of(response)["code"] == "INVALID_MODEL_VERSION"


def test_a_request_whose_images_pass_the_pixel_budget_is_413_before_decoding_the_rest(models_bucket):
    from tests.support.apps import client_for as app_client

    client = app_client(models_bucket, MAX_REQUEST_PIXELS=str(2 * 451 * 300))  # two chelsea photos
    photo = (io.BytesIO(cat_jpeg()), "cat.jpg")

    two = client.post("/v1/classify", data={"image": [photo, (io.BytesIO(cat_jpeg()), "b.jpg")]},
                      content_type="multipart/form-data")
    three = client.post("/v1/classify", data={"image": [(io.BytesIO(cat_jpeg()), f"{i}.jpg") for i in range(3)]},
                        content_type="multipart/form-data")

    assert two.status_code == 200
    assert three.status_code == 413
    assert error_of(three)["code"] == "PIXEL_BUDGET_EXCEEDED"
    assert error_of(three)["message"].startswith("image 2:")

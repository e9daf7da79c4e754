"""Over real HTTP: both functions under functions-framework (gunicorn, forked worker), the
local router in front of them, the storage emulator behind, the real bundled models."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devstack.stack import LocalStack
from imgclassify.store.objects import GcsStore
from tests.support.counting_proxy import CountingProxy
from tests.support.photos import CAT_INDICES, ESPRESSO_INDEX, cat_jpeg, coffee_jpeg

pytestmark = pytest.mark.integration


def test_router_lists_the_three_lite_models(stack):
    response = requests.get(f"{stack.url}/v1/models", timeout=30)

    assert response.status_code == 200
    assert [m["name"] for m in response.json()["models"]] == [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_a_cat_photo_posted_to_lite0_comes_back_a_cat(stack):
    response = requests.post(f"{stack.url}/v1/models/efficientnet_lite0:classify", data=cat_jpeg(),
                             headers={"Content-Type": "image/jpeg"}, timeout=60)

    body = response.json()
    assert response.status_code == 200
    top = body["results"][0]["predictions"][0]
    assert top["index"] in CAT_INDICES
    assert "cat" in top["label"]
    assert 0 < top["score"] <= 1


def test_a_fresh_instance_answers_its_very_first_request_warm(emulator, models_bucket, tmp_path):
    """The default model loads at import, before gunicorn forks the worker that serves."""
    stack = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=tmp_path)
    try:
        url = stack.start_function("classify")
        response = requests.post(f"{url}/v1/classify", data=coffee_jpeg(),
                                 headers={"Content-Type": "image/jpeg"}, timeout=60)
    finally:
        stack.stop()

    body = response.json()
    assert body["model"]["name"] == "efficientnet_lite0"
    assert body["cold_start"] is False
    assert body["results"][0]["predictions"][0]["index"] == ESPRESSO_INDEX


def test_every_model_can_be_chosen_per_request_without_affecting_others(stack):
    def classify(model: str) -> str:
        response = requests.post(f"{stack.url}/v1/classify?model={model}&top_k=1", data=coffee_jpeg(),
                                 headers={"Content-Type": "image/jpeg"}, timeout=120)
        return response.json()["model"]["name"]

    models = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] * 2
    with ThreadPoolExecutor(6) as pool:
        answered = list(pool.map(classify, models))

    assert answered == models


def test_router_serves_the_web_page_at_the_root(stack):
    response = requests.get(f"{stack.url}/", timeout=10)

    assert response.status_code == 200
    assert "text/html" in response.headers["Content-Type"]


def test_router_passes_errors_through_as_json(stack):
    response = requests.post(f"{stack.url}/v1/models/nope:classify", data=b"x",
                             headers={"Content-Type": "image/jpeg"}, timeout=30)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "UNKNOWN_MODEL"


def test_cors_preflight_through_the_router(stack):
    response = requests.options(f"{stack.url}/v1/classify", timeout=10, headers={
        "Origin": "http://allowed.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://allowed.example"


def test_function_logs_are_json_lines_cloud_logging_understands(stack):
    requests.get(f"{stack.function_urls['list_models']}/v1/models", timeout=10,
                 headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})

    log_file = stack.log_dir / "list_models.log"
    entries = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    request_entries = [e for e in entries if "httpRequest" in e]
    assert request_entries[-1]["logging.googleapis.com/trace"].endswith("0af7651916cd43dd8448eb211c80319c")
    assert request_entries[-1]["httpRequest"]["status"] == 200


def test_concurrent_cold_requests_download_the_weights_exactly_once(emulator, models_bucket, tmp_path):
    """Single flight, proved by counting the storage reads of model.onnx that reach the emulator."""
    with CountingProxy(emulator.url) as proxy:
        stack = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=tmp_path)
        env = {"STORAGE_EMULATOR_HOST": proxy.url, "PRELOAD_DEFAULT_MODEL": "false",
               "DOWNLOAD_SLICE_MB": "4"}
        try:
            url = stack.start_function("classify", env=env)

            def classify(_):
                return requests.post(f"{url}/v1/models/efficientnet_lite1:classify", data=cat_jpeg(),
                                     headers={"Content-Type": "image/jpeg"}, timeout=120)

            with ThreadPoolExecutor(32) as pool:
                responses = list(pool.map(classify, range(32)))
        finally:
            stack.stop()

    assert [r.status_code for r in responses] == [200] * 32
    assert any(r.json()["cold_start"] for r in responses)
    # One download is ceil(size / 4 MiB) ranged reads; a second download would double it.
    size = GcsStore(models_bucket).info("models/efficientnet_lite1/1/model.onnx").size
    slices = -(-size // (4 * 2**20))
    assert slices > 1
    assert proxy.media_reads("efficientnet_lite1/1/model.onnx") == slices
    assert proxy.media_reads("efficientnet_lite1/1/manifest.json") == 1

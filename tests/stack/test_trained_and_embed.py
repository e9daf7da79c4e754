"""Trained classifiers and embeddings through the running local stack (router, both functions, emulator).

A classifier trained on scikit-learn's digits is served by the already running functions
without a restart, gives through HTTP the held-out accuracy measured when it was trained,
and ``GET /v1/models/{name}`` lists its evaluation. ``POST /v1/models/{name}:embed`` gives
L2-normalised penultimate features for every body classify takes.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from imgclassify.publish.catalog_writes import publish, remove
from imgclassify.publish.training import TrainOptions, train_classifier
from imgclassify.runtime.engines import EngineOptions
from imgclassify.runtime.models import load_model
from imgclassify.store.catalog import Manifest, read_manifest
from imgclassify.store.objects import GcsStore
from tests.support.digits import write_digit_folder
from tests.support.photos import cat_jpeg, coffee_jpeg

pytestmark = pytest.mark.integration
TIMEOUT = 120


@pytest.fixture(scope="module")
def trained_digits(stack, models_bucket, tmp_path_factory):
    """A digits classifier trained on Lite0 (30 % held out) and published into the stack's bucket."""
    store = GcsStore(models_bucket)
    folder = tmp_path_factory.mktemp("digits")
    write_digit_folder(folder)
    result = train_classifier(store, str(folder), name="digits_stack", options=TrainOptions(test_share=0.3),
                              log=lambda _: None)
    yield result
    remove(store, "digits_stack", result.manifest.version)


def embed(stack, model: str, **request) -> requests.Response:
    return requests.post(f"{stack.url}/v1/models/{model}:embed", timeout=TIMEOUT, **request)


def test_a_trained_classifier_is_served_at_once_with_its_training_time_accuracy(stack, trained_digits):
    assert trained_digits.evaluation["accuracy"] >= 0.93
    hits = 0
    held_out = trained_digits.held_out
    for start in range(0, len(held_out), 32):
        batch = held_out[start:start + 32]
        files = [("image", (f"{n}.png", open(item.uri, "rb").read(), "image/png")) for n, item in enumerate(batch)]
        response = requests.post(f"{stack.url}/v1/models/digits_stack:classify?top_k=1", files=files, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        hits += sum(result["predictions"][0]["label"] == item.label for result, item in zip(results, batch,
                                                                                            strict=True))
    # equal, up to one image whose two best scores are within float32 noise of each other
    assert hits / len(held_out) == pytest.approx(trained_digits.evaluation["accuracy"], abs=1 / len(held_out))


def test_the_model_route_lists_a_trained_classifiers_evaluation(stack, trained_digits):
    response = requests.get(f"{stack.url}/v1/models/digits_stack", timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    assert body["evaluation"] == trained_digits.evaluation
    assert body["labels"] == [str(n) for n in range(10)]
    assert body["feature_size"] == 1280 and body["architecture"] == "trained/linear_head"
    assert body["metadata"]["training"]["backbone"] == "efficientnet_lite0@1"
    assert requests.get(f"{stack.url}/v1/models/efficientnet_lite0", timeout=TIMEOUT).json()["evaluation"] is None


def test_embed_gives_unit_length_penultimate_features_equal_to_the_backbones(stack, models_bucket):
    response = embed(stack, "efficientnet_lite0", data=cat_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "efficientnet_lite0" and body["dimensions"] == 1280
    (result,) = body["results"]
    vector = np.asarray(result["embedding"])
    assert vector.shape == (1280,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    store = GcsStore(models_bucket)
    model = load_model(store, read_manifest(store, "efficientnet_lite0", "1"), EngineOptions())
    features = model.features([model.prepare(cat_jpeg(), max_pixels=10**8)])[0]
    np.testing.assert_allclose(vector, features / np.linalg.norm(features), atol=1e-5)


def test_embed_with_normalize_false_gives_the_raw_features_and_a_bad_value_is_a_400(stack, models_bucket):
    raw = embed(stack, "efficientnet_lite0", params={"normalize": "false"}, data=cat_jpeg(),
                headers={"Content-Type": "image/jpeg"})
    unit = embed(stack, "efficientnet_lite0", data=cat_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and unit.status_code == 200
    vector, unit_vector = (np.asarray(r.json()["results"][0]["embedding"]) for r in (raw, unit))
    assert np.linalg.norm(vector) > 2  # EfficientNet's pooled features are far from unit length
    np.testing.assert_allclose(vector / np.linalg.norm(vector), unit_vector, atol=1e-5)

    bad = embed(stack, "efficientnet_lite0", params={"normalize": "maybe"}, data=cat_jpeg(),
                headers={"Content-Type": "image/jpeg"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST"
    assert "normalize must be true or false" in bad.json()["error"]["message"]


def test_embed_takes_every_classify_body_and_answers_in_input_order(stack):
    cat, coffee = cat_jpeg(), coffee_jpeg()
    multipart = embed(stack, "efficientnet_lite1", files=[("image", ("a.jpg", cat, "image/jpeg")),
                                                          ("image", ("b.jpg", coffee, "image/jpeg")),
                                                          ("image", ("c.jpg", cat, "image/jpeg"))])
    as_json = embed(stack, "efficientnet_lite1", json={"instances": [{"b64": base64.b64encode(coffee).decode()}]})
    assert multipart.status_code == 200 and as_json.status_code == 200
    first, second, third = (np.asarray(r["embedding"]) for r in multipart.json()["results"])
    np.testing.assert_allclose(first, third, atol=1e-6)
    np.testing.assert_allclose(second, np.asarray(as_json.json()["results"][0]["embedding"]), atol=1e-5)
    assert float(first @ second) < 0.9  # a cat and a cup of coffee are far apart


def test_a_trained_classifier_embeds_with_its_backbones_features(stack, trained_digits):
    photo = open(trained_digits.held_out[0].uri, "rb").read()
    trained = embed(stack, "digits_stack", data=photo, headers={"Content-Type": "image/png"}).json()
    backbone = embed(stack, "efficientnet_lite0", data=photo, headers={"Content-Type": "image/png"}).json()
    np.testing.assert_allclose(trained["results"][0]["embedding"], backbone["results"][0]["embedding"], atol=1e-5)


def test_embed_on_a_model_without_a_feature_output_names_publish_migrate(stack, models_bucket):
    store = GcsStore(models_bucket)
    old = read_manifest(store, "efficientnet_lite0", "1")
    # a model as published before graphs carried features: its manifest names none
    publish(store, Manifest(name="no_features", version="1", architecture=old.architecture, artifacts={},
                            labels=old.labels, preprocessing=old.preprocessing),
            {"onnx": store.download(old.artifacts["onnx"].object)})
    try:
        response = embed(stack, "no_features", data=cat_jpeg(), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "EMBEDDINGS_UNAVAILABLE"
        assert "python -m imgclassify.publish migrate no_features" in error["message"]
        classified = requests.post(f"{stack.url}/v1/models/no_features:classify", data=cat_jpeg(),
                                   headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT)
        assert classified.status_code == 200  # classify is unaffected
    finally:
        remove(store, "no_features", "1")


def test_embed_of_an_unknown_model_is_a_json_404(stack):
    response = embed(stack, "no_such_model", data=cat_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "UNKNOWN_MODEL"

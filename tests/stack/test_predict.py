"""preprocess, scores and top_k: the model's part of a request around the engine's forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from imgclassify.imaging.preprocess import pillow_resizes_vertically_first, preprocess
from imgclassify.runtime.scores import scores, top_k
from imgclassify.store.catalog import Preprocessing
from tests.support.photos import real_photo
from tests.support.processes import fresh_python

IMAGENET = Preprocessing(resize=256, crop_size=224)
# Where the whole image is resized (up to an aspect ratio of 16) the pipeline is torchvision's,
# float32 step for float32 step: the same bits.
TORCHVISION_ROUNDING = 0.0
PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS}
TORCHVISION_MODES = {"nearest": transforms.InterpolationMode.NEAREST,
                     "bilinear": transforms.InterpolationMode.BILINEAR,
                     "bicubic": transforms.InterpolationMode.BICUBIC,
                     "lanczos": transforms.InterpolationMode.LANCZOS}


@pytest.fixture(scope="module", params=["chelsea", "coffee", "astronaut"])
def photo(request) -> Image.Image:
    return Image.fromarray(real_photo(request.param))


def reference_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side to ``resize``, the longer in proportion (floored)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def reference_preprocess(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """Written from the torchvision recipe, independently of imgclassify.runtime.scores."""
    new_size = reference_size(*image.size, spec.resize)
    resized = image.resize(new_size, PIL_FILTERS[spec.interpolation])
    left = int(round((new_size[0] - spec.crop_size) / 2.0))
    top = int(round((new_size[1] - spec.crop_size) / 2.0))
    cropped = resized.crop((left, top, left + spec.crop_size, top + spec.crop_size))
    scaled = np.asarray(cropped, dtype=np.float32) / 255.0
    normalised = (scaled - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return normalised.transpose(2, 0, 1)


def torchvision_preprocess(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    pipeline = transforms.Compose([
        transforms.Resize(spec.resize, interpolation=TORCHVISION_MODES[spec.interpolation]),
        transforms.CenterCrop(spec.crop_size),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])
    return pipeline(image).numpy()


def gradient(width: int, height: int) -> Image.Image:
    """Red grows left to right, green top to bottom, blue along the diagonal: every region differs."""
    rows, columns = np.mgrid[0:height, 0:width]
    red = columns * 255 // max(width - 1, 1)
    green = rows * 255 // max(height - 1, 1)
    blue = (rows + columns) * 255 // (width + height)
    return Image.fromarray(np.stack([red, green, blue], -1).astype(np.uint8))


def waves(width: int, height: int, period: int = 64) -> Image.Image:
    """Red a triangle wave along x, green along y (8 grey levels a pixel), blue flat."""
    rows, columns = np.mgrid[0:height, 0:width]

    def triangle(t: np.ndarray) -> np.ndarray:
        return np.abs(t % period - period / 2) * (510 / period)

    return Image.fromarray(np.stack([triangle(columns), triangle(rows), np.full(rows.shape, 128)], -1)
                           .clip(0, 255).astype(np.uint8))


# --- preprocess --------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "spec"), [
    ((640, 480), IMAGENET),
    ((480, 640), IMAGENET),
    ((224, 224), IMAGENET),
    ((10, 7), IMAGENET),
    ((1, 1), Preprocessing(resize=8, crop_size=8)),
    ((451, 300), Preprocessing(resize=232, crop_size=224, interpolation="bicubic")),
    ((300, 451), Preprocessing(resize=300, crop_size=240, interpolation="lanczos")),
    ((999, 998), Preprocessing(resize=64, crop_size=33, interpolation="nearest")),
])
def test_output_is_a_contiguous_float32_chw_array_of_the_crop_size(size, spec):
    image = gradient(*size)

    tensor = preprocess(image, spec)

    assert tensor.shape == (3, spec.crop_size, spec.crop_size)
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous


def test_a_uniform_grey_image_normalises_to_the_expected_constant_per_channel():
    spec = Preprocessing(resize=64, crop_size=48, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    image = Image.new("RGB", (100, 80), (128, 128, 128))

    tensor = preprocess(image, spec)

    grey = 128 / 255
    expected = [(grey - 0.5) / 0.5, (grey - 0.25) / 0.25, grey / 2.0]
    for channel, value in enumerate(expected):
        assert np.allclose(tensor[channel], value, rtol=0, atol=1e-6)


def test_black_and_white_map_to_the_ends_of_the_imagenet_range():
    black = preprocess(Image.new("RGB", (50, 50), (0, 0, 0)), Preprocessing(resize=32, crop_size=32))
    white = preprocess(Image.new("RGB", (50, 50), (255, 255, 255)), Preprocessing(resize=32, crop_size=32))

    mean, std = np.array(IMAGENET.mean), np.array(IMAGENET.std)
    assert np.allclose(black.reshape(3, -1), (-mean / std)[:, None], atol=1e-6)
    assert np.allclose(white.reshape(3, -1), ((1 - mean) / std)[:, None], atol=1e-6)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (232, 224), (299, 299), (160, 127), (256, 221)])
def test_matches_an_independent_reference_implementation_on_real_photos(photo, interpolation, resize, crop):
    spec = Preprocessing(resize=resize, crop_size=crop, interpolation=interpolation)

    tensor = preprocess(photo, spec)

    expected = reference_preprocess(photo, spec)
    assert tensor.shape == expected.shape
    assert np.abs(tensor - expected).max() <= TORCHVISION_ROUNDING


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_matches_torchvision_resize_centercrop_totensor_normalize(photo, interpolation):
    spec = Preprocessing(resize=256, crop_size=224, interpolation=interpolation)

    tensor = preprocess(photo, spec)

    assert np.abs(tensor - torchvision_preprocess(photo, spec)).max() <= TORCHVISION_ROUNDING


@pytest.mark.parametrize("size", [(640, 160), (160, 640), (451, 300), (300, 451), (257, 256), (255, 256),
                                  (259, 256), (256, 259), (37, 411), (411, 37), (40, 400), (101, 405),
                                  (120, 1900), (1900, 120), (7, 29), (60, 960), (960, 60)])
@pytest.mark.parametrize("pattern", ["gradient", "waves"])
def test_matches_torchvision_to_float_rounding_up_to_an_aspect_ratio_of_sixteen(size, pattern):
    image = {"gradient": gradient, "waves": waves}[pattern](*size)

    tensor = preprocess(image, IMAGENET)

    assert np.abs(tensor - torchvision_preprocess(image, IMAGENET)).max() <= TORCHVISION_ROUNDING


def random_sizes(count: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(width, height, resize, crop): landscape and portrait photos up to an aspect ratio of 5,
    shrunk and enlarged, with the crop sizes and resize ratios models use."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        crop = int(rng.choice([33, 224, 240, 260, 299]))
        resize = int(rng.choice([crop, round(crop / 0.875), crop + 32]))
        short = int(rng.integers(max(8, resize // 3), resize * 2))
        long = int(short * rng.uniform(1.0, 5.0))
        sizes.append((short, long, resize, crop) if rng.random() < 0.5 else (long, short, resize, crop))
    return sizes


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "nearest"])
def test_resizing_only_the_crops_columns_or_rows_gives_pillows_pixels_at_random_sizes(interpolation):
    source = Image.fromarray(real_photo("astronaut"))
    sizes = random_sizes(40, seed=sorted(PIL_FILTERS).index(interpolation))

    for width, height, resize, crop in sizes:
        image = source.resize((width, height))
        spec = Preprocessing(resize=resize, crop_size=crop, interpolation=interpolation)

        tensor = preprocess(image, spec)

        assert np.array_equal(tensor, reference_preprocess(image, spec)), (width, height, resize, crop)
    orders = {pillow_resizes_vertically_first((width, height), reference_size(width, height, resize))
              for width, height, resize, _ in sizes}
    assert orders == {True, False}  # both of Pillow's pass orders were exercised


@pytest.mark.parametrize("size", [(50, 801), (801, 50), (3, 1000), (1000, 3), (10, 400), (400, 10),
                                  (20, 1000), (1000, 20)])
def test_beyond_an_aspect_ratio_of_sixteen_the_crop_is_within_a_source_pixel_of_torchvisions(size):
    # Only a central band is resized there, so the sampling grid may shift by a fraction of a
    # source pixel against torchvision. The waves change by 8 grey levels a source pixel: one
    # pixel's change is the bound, and a band two pixels off centre would exceed it.
    image = waves(*size)
    one_source_pixel = 8 / 255 / min(IMAGENET.std)

    tensor = preprocess(image, IMAGENET)

    assert np.abs(tensor - torchvision_preprocess(image, IMAGENET)).max() <= one_source_pixel


@pytest.mark.parametrize("size", [(1, 5000), (5000, 1)])
def test_an_extreme_strip_gives_the_crop_shape_and_its_middle_colour(size):
    values = (np.arange(5000) * 255 // 4999).astype(np.uint8)
    strip = np.repeat(values.reshape(size[1], size[0])[..., None], 3, axis=-1)

    tensor = preprocess(Image.fromarray(strip), IMAGENET)

    assert tensor.shape == (3, 224, 224)
    middle = (127 / 255 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
    assert np.abs(tensor - middle[:, None, None]).max() <= 2 / 255 / min(IMAGENET.std)


MEMORY_PROBE = """
import json, resource, sys
from PIL import Image
from imgclassify.store.catalog import Preprocessing
from imgclassify.imaging.preprocess import preprocess
image = Image.new("RGB", tuple(json.loads(sys.argv[1])), (10, 20, 30))
spec = Preprocessing(resize=256, crop_size=224)
preprocess(Image.new("RGB", (64, 64)), spec)  # warm up lazy imports and allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shape = preprocess(image, spec).shape
print(json.dumps({"shape": shape, "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


@pytest.mark.parametrize("size", [(1, 5000), (5000, 1)])
def test_an_extreme_strip_is_preprocessed_without_a_huge_allocation(size):
    # Resizing the whole 1x5000 strip to a 256-pixel short side would make a 256x1280000 image (~1.3 GB).
    report = json.loads(fresh_python(MEMORY_PROBE, json.dumps(size), timeout=60))
    assert report["shape"] == [3, 224, 224]
    assert report["grew_kib"] < 50_000


def test_preprocess_leaves_the_input_image_unchanged(photo):
    before = np.asarray(photo).copy()

    preprocess(photo, IMAGENET)

    assert photo.mode == "RGB"
    assert (np.asarray(photo) == before).all()


# --- scores ------------------------------------------------------------------------------------

FLOAT32_ULPS = 4 * float(np.finfo(np.float32).eps)  # four units in the last place of 1.0


def reference_softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax in float64, the textbook way, to compare against."""
    exp = np.exp(np.asarray(logits, dtype=np.float64))
    return exp / exp.sum(axis=1, keepdims=True)


def test_scores_of_logits_are_the_softmax_of_each_row_in_float32():
    logits = np.random.default_rng(3).normal(scale=4, size=(3, 7)).astype(np.float32)

    probabilities = scores(logits, "logits")

    assert probabilities.dtype == np.float32
    assert probabilities.shape == (3, 7)
    # float32 arithmetic: within four units in the last place of 1.0
    np.testing.assert_allclose(probabilities, reference_softmax(logits), rtol=0, atol=FLOAT32_ULPS)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=0, atol=FLOAT32_ULPS)


def test_scores_of_huge_logits_do_not_overflow():
    logits = np.array([[1000.0, 999.0, -1000.0], [-5000.0, -5000.0, -5000.0]], dtype=np.float32)

    probabilities = scores(logits)

    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities[0], reference_softmax(np.array([[1.0, 0.0, -2000.0]]))[0],
                               rtol=0, atol=FLOAT32_ULPS)
    np.testing.assert_allclose(probabilities[1], 1 / 3, rtol=0, atol=FLOAT32_ULPS)


def test_scores_of_a_probabilities_output_pass_through_unchanged():
    outputs = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)

    assert np.array_equal(scores(outputs, "probabilities"), outputs)


def test_scores_accept_float64_and_return_float32():
    probabilities = scores(np.array([[0.0, np.log(3.0)]]))

    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, [[0.25, 0.75]], rtol=0, atol=FLOAT32_ULPS)


def test_scores_then_top_k_rank_the_dominant_colour_first():
    # A "network" whose logits are 10x the mean of each normalised channel.
    spec = Preprocessing(resize=32, crop_size=32)
    images = [Image.new("RGB", (40, 40), colour) for colour in ((250, 10, 10), (10, 250, 10), (10, 10, 250))]
    logits = 10 * np.stack([preprocess(image, spec).mean(axis=(1, 2)) for image in images])

    rows = top_k(scores(logits), ("red", "green", "blue"), 1)

    assert [row[0]["label"] for row in rows] == ["red", "green", "blue"]


# --- top_k -------------------------------------------------------------------------------------

LABELS = ("ant", "bee", "cat", "dog")


def test_top_k_returns_k_rows_per_image_most_likely_first():
    probabilities = np.array([[0.10, 0.50, 0.15, 0.25], [0.40, 0.30, 0.20, 0.10]], dtype=np.float32)

    rows = top_k(probabilities, LABELS, 3)

    assert rows == [
        [{"label": "bee", "index": 1, "score": 0.5}, {"label": "dog", "index": 3, "score": 0.25},
         {"label": "cat", "index": 2, "score": 0.15}],
        [{"label": "ant", "index": 0, "score": 0.4}, {"label": "bee", "index": 1, "score": 0.3},
         {"label": "cat", "index": 2, "score": 0.2}],
    ]


def test_top_k_scores_are_plain_floats_sorted_in_descending_order():
    probabilities = scores(np.random.default_rng(1).normal(size=(4, 10)).astype(np.float32))
    labels = tuple(f"class-{index}" for index in range(10))

    rows = top_k(probabilities, labels, 5)

    for row, expected in zip(rows, probabilities, strict=True):
        ranked = [entry["score"] for entry in row]
        assert ranked == sorted(ranked, reverse=True)
        assert all(type(entry["score"]) is float and type(entry["index"]) is int for entry in row)
        assert all(entry["label"] == labels[entry["index"]] for entry in row)
        assert [entry["index"] for entry in row] == np.argsort(-expected)[:5].tolist()
        assert ranked[0] == round(float(expected.max()), 6)


def test_top_k_orders_equal_scores_by_class_index():
    probabilities = np.array([[0.2, 0.3, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32)

    rows = top_k(probabilities, LABELS, 4)

    assert [[entry["index"] for entry in row] for row in rows] == [[1, 3, 0, 2], [0, 1, 2, 3]]


def test_top_k_caps_k_at_the_number_of_classes():
    probabilities = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)

    rows = top_k(probabilities, LABELS, 10)

    assert [entry["label"] for entry in rows[0]] == ["dog", "cat", "bee", "ant"]


def test_top_k_rounds_scores_to_six_decimals():
    probabilities = np.array([[1 / 3, 2 / 3]], dtype=np.float64)

    rows = top_k(probabilities, ("one", "two"), 2)

    assert [entry["score"] for entry in rows[0]] == [0.666667, 0.333333]

"""The golden check of an int8 twin: a host whose answers differ from the publisher's is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclassify.errors import IntegrityError
from imgclassify.runtime.golden import GOLDEN_TOLERANCE, check_golden, golden_batch, golden_entries
from imgclassify.runtime.scores import scores
from imgclassify.store.catalog import Preprocessing

PREPROCESSING = Preprocessing(resize=9, crop_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
WEIGHT = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32) * 4


def strip(photos: int = 3, crop: int = 8) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, size=(crop * photos, crop, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mean_colour_logits(batch: np.ndarray) -> np.ndarray:
    return batch.mean(axis=(2, 3)) @ WEIGHT


def golden_of(png: bytes) -> dict:
    probabilities = scores(mean_colour_logits(golden_batch(png, PREPROCESSING)), "logits")
    names = ["a.png", "b.png", "c.png"][:len(probabilities)]
    return {"tolerance": GOLDEN_TOLERANCE, "photos": golden_entries(probabilities, names)}


def shifted(logit_shift: np.ndarray):
    return lambda batch: mean_colour_logits(batch) + logit_shift


def test_the_golden_crops_are_the_strips_squares_normalised_exactly():
    png = strip()
    batch = golden_batch(png, PREPROCESSING)
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    assert batch.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(batch[1], (pixels[8:16].transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=1e-6)


def test_the_host_that_gives_the_golden_answers_passes_and_one_within_the_tolerance_too():
    png = strip()
    golden = golden_of(png)
    # the manifest keeps six decimals
    assert check_golden("m@1", golden, png, PREPROCESSING, "logits", mean_colour_logits) <= 5e-7
    nudge = np.zeros(6, dtype=np.float32)
    nudge[0] = 0.01  # moves probabilities by well under 0.01
    assert 0 < check_golden("m@1", golden, png, PREPROCESSING, "logits", shifted(nudge)) <= GOLDEN_TOLERANCE


def test_a_host_whose_probabilities_differ_beyond_the_tolerance_is_refused_with_integrity_error():
    png = strip()
    golden = golden_of(png)
    top1 = golden["photos"][0]["top5"][0]["index"]
    shift = np.zeros(6, dtype=np.float32)
    shift[top1] = -0.5
    with pytest.raises(IntegrityError, match=r"m@1 does not give its golden answers on this host \(photo a.png"):
        check_golden("m@1", golden, png, PREPROCESSING, "logits", shifted(shift))


def test_a_host_whose_top1_differs_is_refused_even_when_the_stored_five_are_close():
    png = strip(photos=1)
    golden = golden_of(png)
    stored = {item["index"] for item in golden["photos"][0]["top5"]}
    outside = next(index for index in range(6) if index not in stored)
    shift = np.zeros(6, dtype=np.float32)
    shift[outside] = 8.0  # a class outside the stored top-5 takes the lead
    with pytest.raises(IntegrityError):
        check_golden("m@1", golden, png, PREPROCESSING, "logits", shifted(shift))


def test_a_golden_png_of_another_size_or_count_is_an_integrity_error():
    with pytest.raises(IntegrityError, match="RGB crops of 8x8"):
        golden_batch(strip(crop=7), PREPROCESSING)
    with pytest.raises(IntegrityError, match="holds 2 photos, the manifest 3"):
        check_golden("m@1", golden_of(strip()), strip(photos=2), PREPROCESSING, "logits", mean_colour_logits)

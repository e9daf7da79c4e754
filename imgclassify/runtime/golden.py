"""Golden answers: the check that a quantized model answers on this host as it did where it was published.

int8 kernels differ between CPUs (one without VNNI adds u8 x s8 pairs in saturating 16-bit
arithmetic), so an int8 twin's manifest carries a few photos' top-5 probabilities as the
publisher computed them, and ``golden.png`` (an artifact verified like the graph) holds those
photos' crops, already resized and cropped to the model's input, one under another. Where the
service builds the model it runs them, and refuses the model (IntegrityError) unless every
stored top-5 probability is within the manifest's tolerance and the top-1 class is the same.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from imgclassify.errors import IntegrityError
from imgclassify.imaging.preprocess import preprocess
from imgclassify.store.catalog import Preprocessing

from .scores import scores

GOLDEN_TOLERANCE = 0.01  # absolute, on softmax probabilities; the same CPU family gives 0
GOLDEN_FILENAME = "golden.png"


def golden_batch(png: bytes, preprocessing: Preprocessing) -> np.ndarray:
    """The model inputs stored in ``golden.png``: square crops of the input size, one under another."""
    from PIL import Image

    crop = preprocessing.crop_size
    with Image.open(io.BytesIO(png)) as strip:
        strip.load()
        if strip.mode != "RGB" or strip.width != crop or strip.height % crop or not strip.height:
            raise IntegrityError(f"{GOLDEN_FILENAME} must be RGB crops of {crop}x{crop} one under another; "
                                 f"found {strip.mode} {strip.width}x{strip.height}")
        # resize == crop_size: preprocessing's resize is then the identity and only normalises
        exact = replace(preprocessing, resize=crop)
        return np.stack([preprocess(strip.crop((0, top, crop, top + crop)), exact)
                         for top in range(0, strip.height, crop)])


def golden_entries(probabilities: np.ndarray, names: Sequence[str]) -> list[dict]:
    """What the manifest stores per golden photo: its name and top-5 classes with their probabilities."""
    entries = []
    for name, row in zip(names, probabilities, strict=True):
        top = np.argsort(-row, kind="stable")[:5]
        entries.append({"photo": name, "top5": [{"index": int(i), "probability": round(float(row[i]), 6)}
                                                for i in top]})
    return entries


def check_golden(label: str, golden: dict, png: bytes, preprocessing: Preprocessing, output: str,
                 run: Callable[[np.ndarray], np.ndarray]) -> float:
    """Raise IntegrityError unless ``run`` gives the manifest's golden answers; return the largest difference."""
    entries, tolerance = golden["photos"], float(golden["tolerance"])
    probabilities = scores(run(golden_batch(png, preprocessing)), output)
    if len(probabilities) != len(entries):
        raise IntegrityError(f"{label}: {GOLDEN_FILENAME} holds {len(probabilities)} photos, "
                             f"the manifest {len(entries)}")
    largest = 0.0
    for entry, row in zip(entries, probabilities, strict=True):
        expected = {item["index"]: item["probability"] for item in entry["top5"]}
        difference = max(abs(float(row[index]) - probability) for index, probability in expected.items())
        largest = max(largest, difference)
        top1 = entry["top5"][0]["index"]
        # the host's top-1 may differ only where it ties the stored top-1 within the tolerance
        tied = float(row.max()) - float(row[top1]) <= tolerance
        if difference > tolerance or not tied:
            raise IntegrityError(
                f"{label} does not give its golden answers on this host (photo {entry['photo']}: a top-5 "
                f"probability differs by {difference:.4f}, tolerance {tolerance:g}; top-1 {int(row.argmax())}, "
                f"expected {top1}); this CPU's int8 kernels differ from the publisher's (one without VNNI "
                "saturates): serve the fp32 model here, or publish the twin from a host like this one")
    return largest

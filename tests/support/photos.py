"""Real and generated test images, made in code (nothing is downloaded)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: Image.Image | np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    """``image`` encoded as ``fmt`` bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def real_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos: chelsea (a cat), coffee (espresso), astronaut."""
    from skimage import data

    return getattr(data, name)()


def cat_jpeg() -> bytes:
    return encode(real_photo("chelsea"), "JPEG", quality=92)


def coffee_jpeg() -> bytes:
    return encode(real_photo("coffee"), "JPEG", quality=92)


# ImageNet classes 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian).
CAT_INDICES = range(281, 286)
ESPRESSO_INDEX = 967

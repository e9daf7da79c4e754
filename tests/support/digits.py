"""A labelled photo set made offline from scikit-learn's 8x8 digits, in the ImageFolder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def digit_images(count: int | None = None, size: int = 224) -> list[tuple[str, Image.Image]]:
    """scikit-learn's digits (1 797 of them, ten labels) as ``(label, RGB image)``, upscaled to
    ``size`` with bilinear interpolation, dark strokes on white like ink; the first ``count``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for pixels, target in list(zip(digits.images, digits.target, strict=True))[:count]:
        ink = (255 - pixels * (255 / 16)).astype(np.uint8)
        images.append((str(target), Image.fromarray(ink, "L").resize((size, size), Image.BILINEAR).convert("RGB")))
    return images


def write_digit_folder(root: Path, count: int | None = None, fmt: str = "PNG") -> dict[str, int]:
    """Write ``root/<digit>/<n>.png`` for the first ``count`` digits; return the images per label."""
    counts: dict[str, int] = {}
    for index, (label, image) in enumerate(digit_images(count)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.{fmt.lower()}", fmt)
        counts[label] = counts.get(label, 0) + 1
    return counts

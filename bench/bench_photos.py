"""The photos every benchmark uses, made from scikit-image's bundled photos (nothing is downloaded)."""

from __future__ import annotations

import io


def photos() -> dict[str, tuple[bytes, str]]:
    """A ~500x375 JPEG, a 12-megapixel JPEG and a PNG with alpha, made from bundled photos."""
    from PIL import Image
    from skimage import data

    def encode(image, fmt, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    cat = Image.fromarray(data.chelsea()).resize((500, 375), Image.BICUBIC)
    large = Image.fromarray(data.chelsea()).resize((4000, 3000), Image.BICUBIC)
    coffee = Image.fromarray(data.coffee()).convert("RGBA")
    coffee.putalpha(180)
    return {"small": (encode(cat, "JPEG", quality=90), "image/jpeg"),
            "12mp": (encode(large, "JPEG", quality=90), "image/jpeg"),
            "alpha_png": (encode(coffee, "PNG"), "image/png")}

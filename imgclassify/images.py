"""Safe image decoding: size limits, format allow-list, EXIF orientation, every mode to RGB.

Rules (also in the README): the first frame of an animated image is used; transparent
pixels are composited over white; 16-bit images are scaled to 8 bits, not clipped.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}

# Our own pixel limit (checked before any pixel is decoded) replaces Pillow's global one.
Image.MAX_IMAGE_PIXELS = None


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        pass
    try:
        other = Image.open(io.BytesIO(data))
        found = f"{other.format} images are"
    except Exception:  # noqa: BLE001 - Pillow raises many types for arbitrary bytes
        found = "the data is"
    raise UnsupportedMediaType(
        f"{found} not supported; send JPEG, PNG, WebP, GIF, BMP or TIFF",
        code="UNSUPPORTED_IMAGE_FORMAT",
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit data: scale to 8 bits rather than letting convert() clip everything to white.
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        eight_bit = np.clip(pixels * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(eight_bit, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` into an upright RGB image.

    ``min_side`` lets JPEG decoding downscale by 2, 4 or 8 on the fly (draft mode) while
    keeping the shorter side at least that long: a 12-megapixel photo then decodes about
    as fast as a small one. Raises 413, 415 or 422 service errors for bad input.
    """
    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")
    image = _open(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise UndecodableImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            code="IMAGE_TOO_LARGE",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency" notices
            if image.format == "JPEG" and min_side:
                scale = min_side / min(width, height)
                if scale < 1:
                    image.draft("RGB", (max(1, int(width * scale + 1)), max(1, int(height * scale + 1))))
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, struct.error) as error:
        raise UndecodableImage(f"the {image.format} image cannot be decoded: {error}") from None


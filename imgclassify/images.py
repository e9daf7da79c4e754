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


# File signatures of the allowed formats (WebP: RIFF....WEBP): data that starts like one of
# them but cannot be opened is a damaged or truncated image (422), not a wrong format (415).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _has_allowed_signature(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        pass
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        # e.g. "Truncated File Read" while reading the header of a recognised format
        raise UndecodableImage(f"the image header cannot be read: {error}") from None
    if _has_allowed_signature(data):
        raise UndecodableImage("the image is damaged or truncated: its header cannot be read")
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
    if image.mode in ("1", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a PNG tRNS colour key: that colour is transparent
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit data: scale to 8 bits rather than letting convert() clip everything to white.
        # I;16 is 16-bit by definition (even a dark image); I and F may hold 8-bit values.
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
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
            if image.format in ("JPEG", "MPO") and min_side:  # MPO: a camera JPEG with extra frames
                scale = min_side / min(width, height)
                if scale < 1:
                    image.draft("RGB", (max(1, int(width * scale + 1)), max(1, int(height * scale + 1))))
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, struct.error) as error:
        raise UndecodableImage(f"the {image.format} image cannot be decoded: {error}") from None


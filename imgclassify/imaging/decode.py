"""Safe image decoding: size limits, format allow-list, EXIF orientation, every mode to RGB.

Rules (also in the README): the first frame of an animated image is used; transparent
pixels are composited over white; 16-bit images are scaled to 8 bits, not clipped; float
images are taken as 0..1 when they fit, else scaled from their range.

Bounded work: everything that decides how much decoding an image costs is read from its
header before a pixel is decoded. An image is refused (413) when a side exceeds
:data:`MAX_SIDE` or its pixels exceed ``max_pixels``; and inside :func:`pixel_budget` (one
HTTP request) the pixels that will really be decoded (after JPEG draft reduction) are
charged to the request, which is refused with 413 ``PIXEL_BUDGET_EXCEEDED`` once they pass
the budget.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgclassify.errors import ImageTooLarge, PixelBudgetExceeded, UndecodableImage, UnsupportedImageFormat

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# File names taken as images where a folder or prefix is listed (the batch job, training sets).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# No allowed format is meant for a side longer than JPEG's limit. Beyond it decoders can
# become pathological: an animated WebP declaring a 16 000 000 x 1 canvas (16 Mpx, under
# the pixel limit) takes 17 s in libwebp, against 0.6 s for a 4000 x 4000 one.
MAX_SIDE = 65535
EXIF_ORIENTATION = 0x0112
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Our own pixel limit (checked before any pixel is decoded) replaces Pillow's global one.
Image.MAX_IMAGE_PIXELS = None


# File signatures of the allowed formats (WebP: RIFF....WEBP): data that starts like one of
# them but cannot be opened is a damaged or truncated image (422), not a wrong format (415).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


@dataclass
class PixelBudget:
    """Decoded pixels one request may still cause."""

    limit: int
    used: int = 0

    def charge(self, pixels: int, what: str) -> None:
        if self.used + pixels > self.limit:
            raise PixelBudgetExceeded(
                f"{what} needs {pixels} decoded pixels; with the {self.used} already decoded for this request "
                f"that passes the request's budget of {self.limit} pixels; send fewer or smaller images")
        self.used += pixels


_budget: ContextVar[PixelBudget | None] = ContextVar("pixel_budget", default=None)


@contextlib.contextmanager
def pixel_budget(limit: int) -> Iterator[PixelBudget]:
    """Charge every :func:`decode_image` in this context (one request, one thread) to ``limit`` pixels."""
    budget = PixelBudget(limit)
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)


def is_image_name(name: str) -> bool:
    """Whether a listed file's name says it is an image of a supported format."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _has_allowed_signature(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Truncated File Read" in an EXIF block
            return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        pass
    except Exception as error:  # noqa: BLE001 - Pillow's parsers raise many types for hostile headers
        # e.g. "Truncated File Read" while reading the header of a recognised format
        raise UndecodableImage(f"the image header cannot be read: {error}") from None
    if _has_allowed_signature(data):
        raise UndecodableImage("the image is damaged or truncated: its header cannot be read")
    try:
        other = Image.open(io.BytesIO(data))
        found = f"{other.format} images are"
    except Exception:  # noqa: BLE001 - Pillow raises many types for arbitrary bytes
        found = "the data is"
    raise UnsupportedImageFormat(f"{found} not supported; send JPEG, PNG, WebP, GIF, BMP or TIFF")


def register_decoders() -> None:
    """Register Pillow's decoders of :data:`SUPPORTED_FORMATS` now (a service's start-up), not in
    its first requests: Pillow imports its format plugins at a process's first open, five of them
    (12 ms of a JPEG's first decode), and every plugin it has (``Image.init``, 67 modules, 30 ms of
    a WebP's or a TIFF's first decode) when a format it is asked to try is not registered yet."""
    Image.preinit()
    from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: F401


def _raw_orientation(block: object) -> int | None:
    """The orientation straight from IFD0 of a raw EXIF block, or None.

    For blocks Pillow gives up on: one entry pointing past the end of the block makes it drop
    the whole directory, orientation included.
    """
    if not isinstance(block, bytes):
        return None
    block = block.removeprefix(b"Exif\x00\x00")
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(block[:4])
    if order is None:
        return None
    try:
        (directory,) = struct.unpack_from(order + "I", block, 4)
        (entries,) = struct.unpack_from(order + "H", block, directory)
        for index in range(min(entries, 1000)):
            tag, kind, count = struct.unpack_from(order + "HHI", block, directory + 2 + 12 * index)
            if tag == EXIF_ORIENTATION and kind == 3 and count >= 1:  # one SHORT, stored inline
                return struct.unpack_from(order + "H", block, directory + 2 + 12 * index + 8)[0]
    except struct.error:
        return None
    return None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation when it can be read; ignore every other tag.

    Pillow's ``ImageOps.exif_transpose`` also rewrites the whole EXIF block, which fails on
    one mistyped tag (a DateTime typed FLOAT, an XResolution typed ASCII, ...) that cameras
    and editors do write. Only the orientation matters here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" notices
            orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the picture
        orientation = None
    if orientation is None:
        orientation = _raw_orientation(image.info.get("exif"))
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer and float images to 8-bit RGB, scaled rather than clipped.

    I;16 is 16-bit by definition (even a dark image); I may hold 8-bit values. F (float) is
    taken as 0..1 when it fits (the usual convention), as 8- or 16-bit values when it fits
    those, else scaled from its range. A tRNS colour key (16-bit grayscale PNG) is
    composited over white like any transparency.
    """
    pixels = np.asarray(image)
    key = image.info.get("transparency")
    transparent = pixels == key if isinstance(key, int) else None
    if image.mode == "F":
        pixels = np.nan_to_num(pixels.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(pixels.min(initial=0)), float(pixels.max(initial=0))
        if low >= 0 and high <= 1:
            scale, offset = 255.0, 0.0
        elif low >= 0 and high <= 255:
            scale, offset = 1.0, 0.0
        elif low >= 0 and high <= 65535:
            scale, offset = 255.0 / 65535, 0.0
        else:
            scale, offset = 255.0 / (high - low), low
        eight_bit = np.clip((pixels - offset) * scale + 0.5, 0, 255).astype(np.uint8)
    elif image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
        # A table of all 65536 answers (exact rounding): one lookup per pixel is 10 times faster
        # than arithmetic on a 50-megapixel image.
        if pixels.dtype != np.uint16:
            pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
        eight_bit = _SIXTEEN_TO_EIGHT[pixels]
    else:
        eight_bit = np.clip(pixels, 0, 255).astype(np.uint8)
    if transparent is not None and transparent.any():
        eight_bit = np.where(transparent, np.uint8(255), eight_bit)
    return Image.fromarray(eight_bit, "L").convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _sixteen_bit_to_rgb(image)
    if image.mode in ("1", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a PNG tRNS colour key: that colour is transparent
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _TRANSPARENT_MODES:
        return over_white(image.convert("RGBA"))
    return image.convert("RGB")


def over_white(rgba: Image.Image) -> Image.Image:
    """An RGBA image composited over opaque white, as RGB: the pixels of Pillow's ``alpha_composite``
    over a white layer for every value and alpha, from a paste with the alpha as its mask onto a
    white RGB canvas, which skips the four-band layer and its conversion (a 600x400 RGBA photo:
    0.57 against 1.79 ms)."""
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, (0, 0), rgba)
    return white


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise UndecodableImage(f"the image has no pixels ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageTooLarge(f"the image is {width}x{height}; no side may exceed {MAX_SIDE} pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


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
    _check_size(width, height, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency" notices
            if image.format in ("JPEG", "MPO") and min_side:  # MPO: a camera JPEG with extra frames
                scale = min_side / min(width, height)
                if scale < 1:
                    image.draft("RGB", (max(1, int(width * scale + 1)), max(1, int(height * scale + 1))))
            budget = _budget.get()
            if budget is not None:
                budget.charge(image.size[0] * image.size[1], f"a {width}x{height} {image.format} image")
            image.load()
    except PixelBudgetExceeded:
        raise
    except Exception as error:  # noqa: BLE001 - hostile pixel data makes Pillow raise many types
        raise UndecodableImage(f"the {image.format} image cannot be decoded: {type(error).__name__}: "
                               f"{str(error)[:200]}") from None
    try:
        return _to_rgb(_upright(image))
    except (ValueError, OSError) as error:  # e.g. a TIFF mode Pillow decodes but cannot convert
        raise UndecodableImage(f"the {image.format} image ({image.mode}) cannot be converted to RGB: "
                               f"{str(error)[:200]}") from None

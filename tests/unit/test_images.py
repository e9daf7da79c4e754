"""decode_image: allowed formats, error statuses, size limits, modes to RGB, EXIF, JPEG draft mode."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclassify.errors import PayloadTooLarge, ServiceError, UndecodableImage, UnsupportedMediaType
from imgclassify.imaging.decode import SUPPORTED_FORMATS, decode_image, over_white, pixel_budget
from tests.support.bad_inputs import (
    MISTYPED_EXIF_TAGS,
    ORIENTATION_6,
    animated_webp,
    exif_block,
    png_bomb,
    rotated_cat_with_mistyped_exif,
    sixteen_bit_png,
)
from tests.support.photos import encode, real_photo
from tests.support.processes import fresh_python

MAX_PIXELS = 50_000_000
EXIF_ORIENTATION = 0x0112

RED, GREEN, BLUE, YELLOW = (220, 30, 40), (20, 200, 60), (30, 50, 210), (240, 220, 20)


def decode(data: bytes, **options) -> Image.Image:
    options.setdefault("max_pixels", MAX_PIXELS)
    return decode_image(data, **options)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def quadrants(width: int = 64, height: int = 48) -> np.ndarray:
    """Four flat colours: red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    array = np.zeros((height, width, 3), np.uint8)
    array[: height // 2, : width // 2] = RED
    array[: height // 2, width // 2 :] = GREEN
    array[height // 2 :, : width // 2] = BLUE
    array[height // 2 :, width // 2 :] = YELLOW
    return array


def quadrant_centres(array: np.ndarray) -> list[np.ndarray]:
    height, width = array.shape[:2]
    return [array[height // 4, width // 4], array[height // 4, 3 * width // 4],
            array[3 * height // 4, width // 4], array[3 * height // 4, 3 * width // 4]]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return real_photo("chelsea")


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 4000x3000 JPEG: left half red, right half blue, with a soft vertical gradient."""
    array = np.full((3000, 4000, 3), 20, np.uint8)
    array[:, :2000, 0] = 200
    array[:, 2000:, 2] = 200
    array[..., 1] += np.linspace(0, 60, 3000).astype(np.uint8)[:, None]
    return encode(array, "JPEG", quality=85)


# --- Allowed formats ---------------------------------------------------------------------------

ALLOWED = [
    ("JPEG", {"quality": 95}, 12),
    ("PNG", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("GIF", {}, 0),
    ("BMP", {}, 0),
    ("TIFF", {}, 0),
]


@pytest.mark.parametrize(("fmt", "options", "tolerance"), ALLOWED, ids=[row[0] for row in ALLOWED])
def test_every_allowed_format_decodes_to_rgb_with_the_same_size_and_colours(fmt, options, tolerance):
    original = quadrants()
    data = encode(original, fmt, **options)

    image = decode(data)

    assert image.mode == "RGB"
    assert image.size == (64, 48)
    for found, expected in zip(quadrant_centres(pixels(image)), quadrant_centres(original), strict=True):
        assert np.abs(found - expected).max() <= tolerance


def test_real_photo_jpeg_decodes_to_rgb_close_to_the_original(chelsea):
    data = encode(chelsea, "JPEG", quality=95)

    image = decode(data)

    assert image.mode == "RGB"
    assert image.size == (chelsea.shape[1], chelsea.shape[0])
    assert np.abs(pixels(image) - chelsea).mean() < 3


# --- Rejected input ----------------------------------------------------------------------------

def test_empty_bytes_are_an_undecodable_image_422():
    with pytest.raises(UndecodableImage) as caught:
        decode(b"")

    assert caught.value.status == 422
    assert caught.value.code == "UNDECODABLE_IMAGE"


def test_random_bytes_are_an_unsupported_image_format_415():
    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()

    with pytest.raises(UnsupportedMediaType) as caught:
        decode(data)

    assert caught.value.status == 415
    assert caught.value.code == "UNSUPPORTED_IMAGE_FORMAT"


def test_a_text_file_is_an_unsupported_image_format_415_listing_what_to_send():
    data = b"Dear service,\nplease classify this letter.\n" * 20

    with pytest.raises(UnsupportedMediaType) as caught:
        decode(data)

    assert caught.value.status == 415
    assert caught.value.code == "UNSUPPORTED_IMAGE_FORMAT"
    assert "JPEG, PNG, WebP, GIF, BMP or TIFF" in caught.value.message


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_a_format_pillow_reads_but_we_do_not_allow_is_415_naming_the_format(fmt):
    data = encode(quadrants(32, 32), fmt)

    with pytest.raises(UnsupportedMediaType) as caught:
        decode(data)

    assert caught.value.status == 415
    assert caught.value.code == "UNSUPPORTED_IMAGE_FORMAT"
    assert caught.value.message.startswith(f"{fmt} images are not supported")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_image_is_undecodable_422(chelsea, fmt, fraction):
    data = encode(chelsea, fmt)

    with pytest.raises(UndecodableImage) as caught:
        decode(data[: int(len(data) * fraction)])

    assert caught.value.status == 422
    assert caught.value.code == "UNDECODABLE_IMAGE"
    assert fmt in caught.value.message


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("length", [12, 20, 30, 40, 60])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_an_image_cut_inside_its_header_is_undecodable_422_not_a_server_error(chelsea, fmt, length):
    data = encode(chelsea, fmt)[:length]

    with pytest.raises(UndecodableImage) as caught:
        decode(data)

    assert caught.value.status == 422


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF on the way to failing
@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(fmt=st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"]), cut=st.integers(0, 2000),
       flip=st.integers(0, 1999), byte=st.integers(0, 255))
def test_damaged_images_raise_only_service_errors(fmt, cut, flip, byte):
    data = bytearray(encode(quadrants(24, 16), fmt))
    data[flip % len(data)] = byte
    data = bytes(data[: max(0, len(data) - cut)])

    try:
        image = decode(data, max_pixels=1_000_000)
    except ServiceError as error:
        assert error.status in (413, 415, 422)
    else:
        assert image.mode == "RGB"


# --- Size limits -------------------------------------------------------------------------------

def test_a_png_decompression_bomb_is_rejected_as_too_large_before_any_pixel_is_decoded():
    # 30000x30000 1-bit with a deliberately incomplete IDAT: decoding the pixels would fail
    # with 422, so a 413 proves the size was checked from the header alone.
    bomb = (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4000))
            + png_chunk(b"IEND", b""))

    with pytest.raises(PayloadTooLarge) as caught:
        decode(bomb, max_pixels=MAX_PIXELS)

    assert len(bomb) < 200
    assert caught.value.status == 413
    assert caught.value.code == "IMAGE_TOO_LARGE"
    assert "30000x30000" in caught.value.message


def test_a_highly_compressed_real_png_over_the_pixel_limit_is_too_large():
    data = encode(Image.new("1", (8000, 8000)), "PNG")

    with pytest.raises(PayloadTooLarge) as caught:
        decode(data, max_pixels=MAX_PIXELS)

    assert len(data) < 100_000
    assert caught.value.status == 413
    assert caught.value.code == "IMAGE_TOO_LARGE"


def test_the_pixel_limit_is_inclusive():
    data = encode(quadrants(100, 50), "PNG")

    assert decode(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(PayloadTooLarge):
        decode(data, max_pixels=4999)


# --- Frames and modes --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_an_animated_image_uses_its_first_frame(fmt):
    frames = [Image.new("RGB", (40, 30), colour) for colour in (RED, GREEN, BLUE)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    image = decode(data)

    assert image.size == (40, 30)
    assert np.abs(pixels(image) - RED).max() <= 2


def test_cmyk_jpeg_decodes_to_rgb_with_the_same_colours():
    original = quadrants()
    data = encode(Image.fromarray(original).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    image = decode(data)

    assert image.mode == "RGB"
    for found, expected in zip(quadrant_centres(pixels(image)), quadrant_centres(original), strict=True):
        assert np.abs(found - expected).max() <= 12


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped_to_white(fmt):
    values = np.array([[0, 257, 32768, 65535]], np.uint16).repeat(4, axis=0)
    data = encode(values, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")

    image = decode(data)

    assert image.mode == "RGB"
    assert pixels(image)[0].tolist() == [[0] * 3, [1] * 3, [128] * 3, [255] * 3]


def test_a_dark_16_bit_grayscale_png_stays_dark():
    # Every value is <= 255 out of 65535: under 0.4 % brightness, so at most 1 in 8 bits.
    values = np.array([[0, 100, 200, 255]], np.uint16).repeat(4, axis=0)
    data = encode(values, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    image = decode(data)

    assert pixels(image).max() <= 1


def test_grayscale_decodes_to_rgb_with_three_equal_channels():
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    data = encode(gradient, "PNG")

    image = decode(data)

    assert image.mode == "RGB"
    assert (pixels(image) == gradient[..., None]).all()


def test_one_bit_image_decodes_to_black_and_white():
    bits = Image.new("1", (4, 2), 0)
    bits.putpixel((1, 0), 1)

    image = decode(encode(bits, "PNG"))

    assert pixels(image)[0, 1].tolist() == [255, 255, 255]
    assert pixels(image)[0, 0].tolist() == [0, 0, 0]


def test_grayscale_with_alpha_is_composited_on_white():
    grey = np.zeros((2, 3, 2), np.uint8)
    grey[..., 0] = 0
    grey[0, :, 1] = [0, 128, 255]  # transparent, half, opaque black
    grey[1, :, 1] = 255
    data = encode(Image.fromarray(grey, "LA"), "PNG")

    image = decode(data)

    assert image.mode == "RGB"
    assert pixels(image)[0, :, 0].tolist() == [255, 127, 0]
    assert (pixels(image)[1] == 0).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(fmt):
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([0, 0, 0, *RED, *BLUE] + [0] * (256 - 3) * 3)
    palette_image.putpixel((1, 0), 1)
    palette_image.putpixel((2, 0), 2)
    data = encode(palette_image, fmt, transparency=0)

    image = decode(data)

    assert image.mode == "RGB"
    assert pixels(image)[0].tolist() == [[255, 255, 255], list(RED), list(BLUE), [255, 255, 255]]
    assert (pixels(image)[1] == 255).all()


def test_rgba_is_composited_on_white():
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[0] = [(*RED, 0), (*RED, 255), (0, 0, 0, 128), (*BLUE, 255)]

    image = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))

    assert image.mode == "RGB"
    assert pixels(image)[0].tolist() == [[255, 255, 255], list(RED), [127, 127, 127], list(BLUE)]


def test_compositing_on_white_gives_pillows_alpha_composite_for_every_value_and_alpha():
    value, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgba = Image.fromarray(np.stack([value, 255 - value, value // 2, alpha], axis=-1), "RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))

    assert np.array_equal(pixels(over_white(rgba)), pixels(Image.alpha_composite(white, rgba).convert("RGB")))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_transparent_colour_key_is_composited_on_white(mode):
    # PNG's tRNS chunk for grayscale and truecolour images: one colour means "transparent".
    key = 0 if mode == "L" else (0, 0, 0)
    colour_image = Image.new(mode, (3, 1), key)
    colour_image.putpixel((1, 0), 90 if mode == "L" else RED)
    data = encode(colour_image, "PNG", transparency=key)

    image = decode(data)

    expected_middle = [90] * 3 if mode == "L" else list(RED)
    assert pixels(image)[0].tolist() == [[255, 255, 255], expected_middle, [255, 255, 255]]


# --- Orientation and shapes --------------------------------------------------------------------

@pytest.mark.parametrize(("orientation", "stored_as"), [(6, Image.Transpose.ROTATE_90),
                                                        (8, Image.Transpose.ROTATE_270),
                                                        (3, Image.Transpose.ROTATE_180)])
def test_an_exif_rotated_jpeg_comes_out_upright(chelsea, orientation, stored_as):
    upright = Image.fromarray(chelsea)
    stored = upright.transpose(stored_as)
    data = encode(stored, "JPEG", quality=95, exif=exif_with_orientation(orientation))

    image = decode(data)

    assert image.size == upright.size
    assert np.abs(pixels(image) - chelsea).mean() < 3


def test_a_jpeg_without_orientation_is_not_rotated(chelsea):
    data = encode(chelsea, "JPEG", quality=95, exif=exif_with_orientation(1))

    image = decode(data)

    assert image.size == (chelsea.shape[1], chelsea.shape[0])
    assert np.abs(pixels(image) - chelsea).mean() < 3


def test_a_1x1_image_decodes():
    image = decode(encode(np.array([[RED]], np.uint8), "PNG"))

    assert image.size == (1, 1)
    assert pixels(image)[0, 0].tolist() == list(RED)


@pytest.mark.parametrize("size", [(1, 5000), (5000, 1)])
def test_an_extreme_aspect_ratio_decodes_whole(size):
    width, height = size
    strip = np.arange(5000, dtype=np.uint16).reshape(height, width) % 256
    data = encode(strip.astype(np.uint8), "PNG")

    image = decode(data)

    assert image.size == size
    assert (pixels(image)[..., 0] == strip).all()


# --- JPEG draft mode ---------------------------------------------------------------------------

def test_a_large_jpeg_with_min_side_decodes_smaller_but_keeps_the_shorter_side(big_jpeg):
    image = decode(big_jpeg, min_side=256)

    width, height = image.size
    assert image.mode == "RGB"
    assert 256 <= min(width, height) < 512
    assert width < 4000
    assert width * 3 == height * 4
    left, right = pixels(image)[height // 2, width // 4], pixels(image)[height // 2, 3 * width // 4]
    assert left[0] > 180 and left[2] < 40
    assert right[2] > 180 and right[0] < 40


def test_a_large_jpeg_without_min_side_decodes_at_full_size(big_jpeg):
    image = decode(big_jpeg)

    assert image.size == (4000, 3000)


def test_min_side_larger_than_the_image_decodes_at_full_size(big_jpeg):
    image = decode(big_jpeg, min_side=5000)

    assert image.size == (4000, 3000)


@pytest.mark.parametrize(("size", "min_side"), [((800, 600), 100), ((600, 800), 100), ((1000, 999), 125),
                                                ((801, 1601), 200), ((640, 480), 239), ((640, 480), 240),
                                                ((333, 2000), 40), ((97, 50), 7)])
def test_jpeg_draft_mode_never_goes_below_min_side(size, min_side):
    data = encode(Image.new("RGB", size, GREEN), "JPEG")

    image = decode(data, min_side=min_side)

    assert min(image.size) >= min_side
    if min(size) >= 2 * min_side + 2:
        assert image.size < size


def test_draft_mode_is_not_used_for_png():
    data = encode(Image.new("RGB", (800, 600), GREEN), "PNG")

    assert decode(data, min_side=100).size == (800, 600)


def test_draft_mode_and_exif_rotation_together_give_an_upright_reduced_image():
    upright = np.zeros((800, 600, 3), np.uint8)
    upright[:400] = RED
    upright[400:] = BLUE
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 800 wide, 600 high
    data = encode(stored, "JPEG", quality=95, exif=exif_with_orientation(6))

    image = decode(data, min_side=100)

    assert image.size == (150, 200)
    assert np.abs(pixels(image)[20, 75] - RED).max() < 20
    assert np.abs(pixels(image)[180, 75] - BLUE).max() < 20


def test_a_camera_mpo_jpeg_also_decodes_in_draft_mode(big_jpeg):
    first = Image.open(io.BytesIO(big_jpeg))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"

    image = decode(buffer.getvalue(), min_side=256)

    assert 256 <= min(image.size) < 512


def test_a_grayscale_jpeg_decodes_to_rgb_in_draft_mode():
    data = encode(Image.new("L", (800, 600), 77), "JPEG")

    image = decode(data, min_side=100)

    assert image.mode == "RGB"
    assert min(image.size) >= 100
    assert np.abs(pixels(image) - 77).max() <= 2


# --- Hostile headers and metadata (issue 12) ----------------------------------------------------

@pytest.mark.parametrize("tag", sorted(MISTYPED_EXIF_TAGS))
def test_a_mistyped_exif_tag_is_ignored_and_the_orientation_still_applied(chelsea, tag):
    image = decode(rotated_cat_with_mistyped_exif(tag))

    assert image.size == (chelsea.shape[1], chelsea.shape[0])
    assert np.abs(pixels(image) - chelsea).mean() < 4


def test_an_unreadable_exif_block_leaves_the_image_as_stored():
    stored = quadrants()
    data = encode(stored, "JPEG", quality=95, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff garbage")

    image = decode(data)

    assert image.size == (64, 48)


def test_an_animated_webp_with_a_16_megapixel_one_row_canvas_is_refused_from_its_header():
    data = animated_webp(16_000_000, 1)
    assert len(data) < 100

    with pytest.raises(PayloadTooLarge) as caught:
        decode(data)

    assert caught.value.code == "IMAGE_TOO_LARGE"
    assert "65535" in caught.value.message


def test_a_side_of_65535_is_allowed_and_one_more_is_not():
    assert decode(animated_webp(65535, 1)).size == (65535, 1)
    with pytest.raises(PayloadTooLarge):
        decode(png_bomb(65536, 1))


def test_the_pixel_budget_refuses_the_image_that_would_pass_it_and_counts_what_was_decoded():
    small = encode(quadrants(), "PNG")  # 64 x 48 = 3072 pixels

    with pixel_budget(3 * 3072) as budget:
        for _ in range(3):
            decode(small)
        with pytest.raises(PayloadTooLarge) as caught:
            decode(small)

    assert caught.value.code == "PIXEL_BUDGET_EXCEEDED"
    assert budget.used == 3 * 3072


def test_the_pixel_budget_charges_a_jpeg_only_the_pixels_draft_mode_decodes(big_jpeg):
    with pixel_budget(10_000_000) as budget:
        image = decode(big_jpeg, min_side=256)

    assert budget.used == image.size[0] * image.size[1] < 12_000_000 / 16


def test_no_budget_applies_outside_a_request():
    for _ in range(3):
        decode(encode(quadrants(), "PNG"))


def test_a_16_bit_grayscale_png_with_a_trns_colour_key_is_composited_on_white():
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return png_chunk(kind, payload)

    rows = b"".join(b"\0" + struct.pack(">4H", *values) for values in ([1000, 30000, 60000, 1000],))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 16, 0, 0, 0, 0))
            + chunk(b"tRNS", struct.pack(">H", 1000)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))

    image = decode(data)

    assert pixels(image)[0, :, 0].tolist() == [255, round(30000 * 255 / 65535), round(60000 * 255 / 65535), 255]


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),          # the usual 0..1 convention
    ([0.0, 10.0, 128.0, 255.0], [0, 10, 128, 255]),     # 8-bit values stored as floats
    ([-1.0, 0.0, 1.0, 3.0], [0, 64, 128, 255]),         # anything else: scaled from its range
])
def test_a_float_tiff_is_scaled_to_8_bits_not_black(values, expected):
    data = encode(Image.fromarray(np.array([values], np.float32), "F"), "TIFF")

    image = decode(data)

    assert image.mode == "RGB"
    assert pixels(image)[0, :, 0].tolist() == expected


def test_a_float_tiff_with_nan_and_infinity_decodes():
    data = encode(Image.fromarray(np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32), "F"), "TIFF")

    assert pixels(decode(data))[0, 3, 0] == 128


def test_a_maximum_size_16_bit_png_converts_with_integer_rounding():
    image = decode(sixteen_bit_png(1000))

    row = pixels(image)[0, :, 0]
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)


def test_the_orientation_is_applied_even_when_another_entry_makes_pillow_drop_the_whole_exif_block():
    # Make typed SHORT x3 (6 bytes) but stored inline: its "offset" points past the block, and
    # Pillow then drops every tag of the directory, orientation included.
    block = exif_block(ORIENTATION_6, (0x010F, 3, 3, b"!"))
    data = encode(quadrants(), "JPEG", quality=95, exif=block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own "Truncated File Read" for this block
        assert Image.open(io.BytesIO(data)).getexif().get(EXIF_ORIENTATION) is None

    image = decode(data)

    assert image.size == (48, 64)
    assert np.abs(pixels(image)[4, -4] - np.array(RED)).max() < 12  # red came from the top left


# A fresh process (this one has opened images already) decodes one image of each allowed format,
# after register_decoders (argument "registered") or not, and prints the modules the decodes
# imported and whether Pillow initialised every plugin it has.
FIRST_DECODES = """
import json, sys
from pathlib import Path
from PIL import Image
from imgclassify.imaging.decode import SUPPORTED_FORMATS, decode_image, register_decoders

if sys.argv[2] == "registered":
    register_decoders()
before = set(sys.modules)
for fmt in SUPPORTED_FORMATS:
    decode_image((Path(sys.argv[1]) / fmt).read_bytes(), max_pixels=10**6)
print(json.dumps({"imported": sorted(set(sys.modules) - before), "every_plugin": Image._initialized > 1}))
"""


def first_decodes(folder: Path, mode: str) -> dict:
    return json.loads(fresh_python(FIRST_DECODES, folder, mode))


def test_after_register_decoders_the_first_image_of_each_allowed_format_imports_nothing(tmp_path):
    for fmt in SUPPORTED_FORMATS:
        (tmp_path / fmt).write_bytes(encode(np.full((24, 32, 3), 90, np.uint8), fmt))
    assert first_decodes(tmp_path, "registered") == {"imported": [], "every_plugin": False}
    unregistered = first_decodes(tmp_path, "not registered")  # what a service's first requests did
    assert "PIL.JpegImagePlugin" in unregistered["imported"] and unregistered["every_plugin"]

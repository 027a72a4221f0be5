"""Decode and validate: convert what can be RGB, quarantine the rest with a specific reason."""
import io

import numpy as np
import pytest
from PIL import Image

from emr_job import images
from emr_job.images import MAX_DECODE_BYTES, MAX_PIXELS, Reason, Rejected, decode_rgb, preprocess


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)), "JPEG")


def test_preprocess_is_bicubic_resize_then_scale_to_minus_one_one():
    # GIVEN a real-looking RGB JPEG
    content = jpeg_bytes()
    # WHEN preprocessed THEN it equals the contract's formula exactly
    expected = np.asarray(
        Image.open(io.BytesIO(content)).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32
    ) / 127.5 - 1
    np.testing.assert_array_equal(preprocess(content), expected)


@pytest.mark.parametrize(
    ("image", "fmt", "expected_pixel"),
    [
        (Image.new("L", (8, 8), 200), "PNG", (200, 200, 200)),
        (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent → white
        (Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
        (Image.new("LA", (8, 8), (0, 0)), "PNG", (255, 255, 255)),
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", None),
        (Image.new("I;16", (8, 8), 65535), "PNG", (255, 255, 255)),
        (Image.new("P", (8, 8), 3), "PNG", None),
        (Image.new("RGB", (8, 8), (1, 2, 3)), "PNG", (1, 2, 3)),
    ],
    ids=["grayscale", "rgba-transparent", "rgba-opaque", "la", "cmyk", "16-bit", "palette", "rgb-png"],
)
def test_convertible_modes_become_rgb(image, fmt, expected_pixel):
    decoded = decode_rgb(encode(image, fmt))
    assert not isinstance(decoded, Rejected), decoded
    assert decoded.mode == "RGB"
    if expected_pixel is not None:
        assert decoded.getpixel((4, 4)) == expected_pixel


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP", "ICO", "PPM"])
def test_formats_verger_does_not_accept_are_refused_by_name_without_parsing(fmt, monkeypatch):
    # GIVEN a valid image in a format other than JPEG or PNG (PIL could decode it)
    content = encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
    # WHEN preprocessed  THEN it is refused as unsupported, naming the format
    rejected = preprocess(content)
    assert rejected.reason == Reason.UNSUPPORTED_FORMAT
    assert fmt in rejected.detail and "JPEG, PNG" in rejected.detail


def test_a_multi_picture_jpeg_as_cameras_write_it_is_accepted():
    # GIVEN an MPO (a JPEG with a second picture appended, as many cameras write)
    content = encode(Image.new("RGB", (64, 48), (200, 10, 10)), "MPO", save_all=True,
                     append_images=[Image.new("RGB", (64, 48))])
    assert Image.open(io.BytesIO(content)).format == "MPO"
    # THEN it is decoded like any JPEG
    assert preprocess(content).shape == (224, 224, 3)


def test_sixteen_bit_values_scale_to_eight_bits_as_round_of_x_times_255_over_65535():
    # GIVEN every 16-bit value (and 32-bit values, negative, small and too large)
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    for image, top in ((Image.fromarray(every), 65535),
                       (Image.fromarray(np.array([[-5, 0, 17, 255]], np.int32)), 255),
                       (Image.fromarray(np.array([[-5, 300, 65535, 70000]], np.int32)), 65535)):
        wide = np.asarray(image, np.float64)
        # WHEN scaled in integers, a few rows at a time
        narrow = np.asarray(images.scaled_to_8_bits(image, rows=7))
        # THEN it equals the contract's float formula exactly
        np.testing.assert_array_equal(narrow, np.clip(wide * (255.0 / top), 0, 255).round().astype(np.uint8))


@pytest.mark.parametrize(
    ("color_type", "bit_depth", "mode"), [(0, 16, "I;16"), (6, 8, "RGBA")], ids=["16-bit-gray", "rgba"]
)
def test_an_image_over_the_memory_budget_is_refused_from_its_header(crafted_png, color_type, bit_depth, mode):
    # GIVEN a small PNG just under PIL's pixel limit (2 GiB or more to decode)
    side = int(MAX_PIXELS ** 0.5)
    content = crafted_png(side, side, color_type, bit_depth)
    assert len(content) < 400 * 1024
    # WHEN preprocessed  THEN it is refused before decoding, with the mode, size and budget named
    rejected = preprocess(content)
    assert rejected.reason == Reason.OVER_MEMORY_BUDGET
    assert f"{side}x{side} {mode}" in rejected.detail
    assert f"{MAX_DECODE_BYTES // 2**20:,} MiB" in rejected.detail


def test_the_same_pixels_pass_or_not_by_bytes_per_pixel():
    # GIVEN 40 MP: within the budget as 8-bit grayscale, over it as RGBA
    side = int((40e6) ** 0.5)
    gray, rgba = Image.new("L", (side, side)), Image.new("RGBA", (side, side))
    # THEN the header check accepts one and refuses the other
    assert images.header_refusal(gray) is None
    assert images.header_refusal(rgba).reason == Reason.OVER_MEMORY_BUDGET


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([10, 20, 30] * 256)
    decoded = decode_rgb(encode(image, "PNG", transparency=0))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_zero_bytes_are_quarantined_as_empty():
    assert preprocess(b"").reason == Reason.EMPTY


def test_text_is_quarantined_as_not_an_image():
    rejected = preprocess(b"hello, this is not a photo")
    assert rejected.reason == Reason.NOT_AN_IMAGE
    assert "hello" in rejected.detail


def test_truncated_jpeg_is_quarantined_as_truncated():
    content = jpeg_bytes()
    assert preprocess(content[: len(content) // 2]).reason == Reason.TRUNCATED


def test_corrupt_png_is_quarantined_as_truncated():
    content = bytearray(encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG"))
    content[60:80] = b"\x00" * 20  # inside the image data chunk
    assert preprocess(bytes(content)).reason == Reason.TRUNCATED


@pytest.mark.parametrize("scale", [1.01, 2.5], ids=["just-over-the-limit", "far-over-the-limit"])
def test_decompression_bomb_is_quarantined_before_decoding(scale):
    # GIVEN a small PNG whose header claims more pixels than the limit
    side = int((MAX_PIXELS * scale) ** 0.5)
    content = encode(Image.new("1", (side, side)), "PNG")
    # THEN it is refused with the pixel count, not decoded
    rejected = preprocess(content)
    assert rejected.reason == Reason.TOO_MANY_PIXELS
    assert f"{side * side}" in rejected.detail.replace(",", "")


def test_a_decoder_failure_of_any_kind_is_a_quarantine_reason(monkeypatch):
    # GIVEN a decoder that fails with an error PIL does not document (e.g. struct.error)
    import struct

    def broken(*_, **__):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image, "open", broken)
    # THEN the image is quarantined with the error's name, and nothing is raised
    rejected = preprocess(jpeg_bytes())
    assert rejected.reason == Reason.TRUNCATED and "error" in rejected.detail

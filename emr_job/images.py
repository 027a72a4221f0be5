"""Decode, validate and preprocess one image, the way the feature contract says.

Everything that can be turned into RGB is; everything else becomes a `Rejected` with a reason code
and a message a person can act on. Nothing here raises for bad bytes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from contract.layout import INPUT_SIZE

# PIL's own limit (about 89.5 MP, larger than any phone photo): past it, a decompression bomb.
# PIL only warns between 1x and 2x the limit, so the size is checked from the header, before
# decoding (a warnings filter would be process-wide state, and not thread-safe to toggle).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# The formats Verger accepts (its upload suffixes are .jpg, .jpeg and .png): PIL's other parsers
# are never run on uploaded bytes. MPO, the multi-picture JPEG many cameras write, opens as JPEG.
ACCEPTED_FORMATS = ("JPEG", "PNG")
# Memory one image may take while it becomes a 224x224 array: a 50 MP RGB photo fits, a 16-bit or
# RGBA image just under MAX_PIXELS (2 to 2.5 GiB before this budget) does not. A Python worker
# decodes `extract.DECODE_THREADS` images at once.
MAX_DECODE_BYTES = 512 * 1024 * 1024
# Peak bytes per pixel of `preprocess`, by the mode the header announces, EXIF rotation included
# (PIL keeps RGB, CMYK, LA and RGBA at 4 bytes per pixel; conversions add copies). Measured as
# peak resident memory on 9 MP images, plus about 1 byte of margin; tests/unit/job/test_image_memory.py
# checks that no mode exceeds its figure.
PEAK_BYTES_PER_PIXEL = {
    "1": 6, "L": 6, "P": 6,
    "I;16": 8, "I;16B": 8, "I;16L": 8,
    "RGB": 9, "YCbCr": 9, "CMYK": 9,
    "I": 17, "RGBA": 17,
    "P+transparency": 18,
    "LA": 21, "PA": 21,
}


class Reason:
    """Quarantine reason codes (stable strings: they are stored and counted in reports)."""

    MISSING = "missing"
    FORBIDDEN = "forbidden"
    FETCH_FAILED = "fetch_failed"
    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNSUPPORTED_MODE = "unsupported_mode"
    UNSAFE_KEY = "unsafe_key"
    OUTSIDE_SOURCE = "outside_source"
    TOO_LARGE = "too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    OVER_MEMORY_BUDGET = "over_memory_budget"


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def preprocess(content: bytes) -> np.ndarray | Rejected:
    """Bytes → float32 (224, 224, 3) in [-1, 1], or the reason they cannot be.

    RGB, PIL bicubic resize to 224×224, then `x / 127.5 - 1` (Keras `preprocess_input` for
    MobileNetV2). The filter is part of the contract: bilinear moves features to cosine 0.98.

    Examples
    --------
    >>> buffer = io.BytesIO(); Image.new("L", (10, 20), 255).save(buffer, "PNG")
    >>> x = preprocess(buffer.getvalue()); x.shape, x.dtype, float(x.max())
    ((224, 224, 3), dtype('float32'), 1.0)
    >>> preprocess(b"")
    Rejected(reason='empty', detail='the object has zero bytes')
    """
    image = decode_rgb(content)
    if isinstance(image, Rejected):
        return image
    resized = image.resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32)  # (224, 224, 3) in [0, 255]
    return pixels / 127.5 - 1.0


def decode_rgb(content: bytes) -> Image.Image | Rejected:
    if not content:
        return Rejected(Reason.EMPTY, "the object has zero bytes")
    try:
        image = Image.open(io.BytesIO(content), formats=ACCEPTED_FORMATS)
        refused = header_refusal(image)
        if refused:
            return refused
        image.load()
    except Image.DecompressionBombError as error:
        return Rejected(Reason.TOO_MANY_PIXELS, str(error))
    except UnidentifiedImageError:
        return unidentified(content)
    except Exception as error:  # decoders raise OSError, SyntaxError, struct.error, IndexError…
        return Rejected(Reason.TRUNCATED, f"corrupt or truncated image data ({type(error).__name__}: {error})")
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright photo
        return to_rgb(image)
    except Exception as error:
        return Rejected(Reason.UNSUPPORTED_MODE, f"cannot convert mode {image.mode} to RGB ({type(error).__name__}: {error})")


def header_refusal(image: Image.Image) -> Rejected | None:
    """Why the image must not be decoded, judged from its header alone: too many pixels, or more
    memory than MAX_DECODE_BYTES for its mode."""
    pixels = image.width * image.height
    if pixels > MAX_PIXELS:
        return Rejected(
            Reason.TOO_MANY_PIXELS,
            f"{image.width}x{image.height} = {pixels:,} pixels exceeds the limit of {MAX_PIXELS:,}",
        )
    needed = decode_bytes(image)
    if needed > MAX_DECODE_BYTES:
        return Rejected(
            Reason.OVER_MEMORY_BUDGET,
            f"decoding {image.width}x{image.height} {image.mode} takes about {needed / 2**20:,.0f} MiB, "
            f"over the budget of {MAX_DECODE_BYTES / 2**20:,.0f} MiB per image",
        )
    return None


def decode_bytes(image: Image.Image) -> int:
    """Peak memory `preprocess` needs for this opened (not yet decoded) image; an unknown mode
    counts as the most expensive one.

    Examples
    --------
    >>> decode_bytes(Image.new("RGB", (1000, 1000))), decode_bytes(Image.new("I;16", (1000, 1000)))
    (9000000, 8000000)
    """
    mode = "P+transparency" if image.mode == "P" and "transparency" in image.info else image.mode
    per_pixel = PEAK_BYTES_PER_PIXEL.get(mode, max(PEAK_BYTES_PER_PIXEL.values()))
    return image.width * image.height * per_pixel


def unidentified(content: bytes) -> Rejected:
    """`unsupported_format` when another of PIL's formats recognises the first bytes (only its
    signature test runs, never its parser), else `not_an_image`."""
    Image.init()
    prefix = content[:16]
    for name, (_, accepts) in Image.OPEN.items():
        try:
            recognised = name not in ACCEPTED_FORMATS and accepts is not None and accepts(prefix)
        except Exception:  # a signature test that cannot judge 16 bytes has not recognised them
            recognised = False
        if recognised:
            return Rejected(Reason.UNSUPPORTED_FORMAT,
                            f"a {name} image: Verger accepts {', '.join(ACCEPTED_FORMATS)}")
    return Rejected(Reason.NOT_AN_IMAGE,
                    f"not a {' or '.join(ACCEPTED_FORMATS)} image (first bytes {content[:8]!r})")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any PIL mode; transparency is composited on white, 16-bit is scaled to 8-bit."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = scaled_to_8_bits(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def scaled_to_8_bits(image: Image.Image, rows: int = 256) -> Image.Image:
    """Mode L from 16- or 32-bit integers: round(x * 255 / top), top = 65535 (or 255 for 32-bit
    values that never exceed it), in integers a few rows at a time, never a float64 copy."""
    wide = np.asarray(image)  # (h, w) uint16 or int32
    top = 65535 if image.mode.startswith("I;16") or wide.max() > 255 else 255
    narrow = np.empty(wide.shape, np.uint8)
    for start in range(0, wide.shape[0], rows):
        block = np.clip(wide[start:start + rows], 0, top).astype(np.int64)
        narrow[start:start + rows] = (block * 255 + top // 2) // top
    return Image.fromarray(narrow, "L")

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
        image = Image.open(io.BytesIO(content))
        if image.width * image.height > MAX_PIXELS:
            return Rejected(
                Reason.TOO_MANY_PIXELS,
                f"{image.width}x{image.height} = {image.width * image.height:,} pixels exceeds the "
                f"limit of {MAX_PIXELS:,}",
            )
        image.load()
    except Image.DecompressionBombError as error:
        return Rejected(Reason.TOO_MANY_PIXELS, str(error))
    except UnidentifiedImageError:
        return Rejected(Reason.NOT_AN_IMAGE, f"not a format PIL can read (first bytes {content[:8]!r})")
    except Exception as error:  # decoders raise OSError, SyntaxError, struct.error, IndexError…
        return Rejected(Reason.TRUNCATED, f"corrupt or truncated image data ({type(error).__name__}: {error})")
    try:
        return to_rgb(ImageOps.exif_transpose(image))
    except Exception as error:
        return Rejected(Reason.UNSUPPORTED_MODE, f"cannot convert mode {image.mode} to RGB ({type(error).__name__}: {error})")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any PIL mode; transparency is composited on white, 16-bit is scaled to 8-bit."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or wide.max() > 255 else 255.0
        image = Image.fromarray(np.clip(wide * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")

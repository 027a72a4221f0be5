"""Memory per image: what a fresh Python worker's resident memory peaks at while it decodes.

Each measurement runs in its own process, with the code paths warmed up on a tiny image first;
the peak is the kernel's high-water mark (VmHWM), reset just before the work (`ru_maxrss` would
carry the parent's peak across fork and exec), so the growth measured is the decode's own.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emr_job.images import MAX_DECODE_BYTES, MAX_PIXELS, Reason, decode_bytes

REPO = Path(__file__).resolve().parents[3]
ROTATED = 6  # EXIF orientation "rotate 90°": the worst case, transposing adds a copy

MEASURE = """
import json, sys
sys.path.insert(0, {repo!r})
import numpy as np, pandas as pd
from emr_job.extract import extract_frame

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

fake = lambda batch: np.zeros((len(batch), 1280), np.float32)
keys = {keys!r}
extract_frame(pd.DataFrame({{"image_key": [{warm!r}], "etag": ["e"]}}), {source!r}, fake, 8)  # warm-up
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # resets VmHWM to the current resident size
before = status("VmRSS")
out = extract_frame(pd.DataFrame({{"image_key": keys, "etag": ["e"] * len(keys)}}), {source!r}, fake, 8)
print(json.dumps({{"growth": status("VmHWM") - before, "reasons": out["reason"].tolist()}}))
"""


def worker_peak(folder: Path, keys: list[str], warm: str) -> dict:
    """Run the worker's partition function over `keys` in a fresh process; its peak RSS growth."""
    script = MEASURE.format(repo=str(REPO), keys=keys, warm=warm, source=f"file://{folder}")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def rotated(image: Image.Image, fmt: str, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = ROTATED
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif, **options)
    return buffer.getvalue()


def palette_with_transparency(size: tuple[int, int]) -> Image.Image:
    image = Image.new("P", size, 1)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    return image


SIDE = 3000
# One image per conversion path of `to_rgb` ("1" and "P" share L's; PNG and JPEG RGB share one).
MODES = {
    "L-jpeg": (lambda: Image.new("L", (SIDE, SIDE), 90), "JPEG"),
    "P": (lambda: Image.new("P", (SIDE, SIDE), 3), "PNG"),
    "P+transparency": (lambda: palette_with_transparency((SIDE, SIDE)), "PNG"),
    "RGB-jpeg": (lambda: Image.new("RGB", (SIDE, SIDE), (9, 80, 200)), "JPEG"),
    "CMYK": (lambda: Image.new("CMYK", (SIDE, SIDE), (0, 90, 90, 0)), "JPEG"),
    "I;16": (lambda: Image.fromarray(np.full((SIDE, SIDE), 40000, np.uint16)), "PNG"),
    "LA": (lambda: Image.new("LA", (SIDE, SIDE), (90, 128)), "PNG"),
    "RGBA": (lambda: Image.new("RGBA", (SIDE, SIDE), (9, 80, 200, 128)), "PNG"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_no_mode_takes_more_memory_than_the_header_check_assumes(mode, tmp_path):
    # GIVEN a 9 MP image of this mode with an EXIF rotation (transposing costs a copy)
    make, fmt = MODES[mode]
    content = rotated(make(), fmt)
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "big").write_bytes(content)
    (tmp_path / "A" / "warm").write_bytes(rotated(make().resize((16, 16)), fmt))
    # WHEN a fresh worker decodes it
    measured = worker_peak(tmp_path, ["A/big"], "A/warm")
    # THEN it was decoded, and its memory stayed within what the header check charges for it
    assert measured["reasons"] == [None]
    assert measured["growth"] <= decode_bytes(Image.open(io.BytesIO(content))), measured


def test_a_worker_fed_the_crafted_files_stays_under_the_memory_budget(tmp_path, crafted_png):
    # GIVEN the two crafted PNGs just under PIL's pixel limit (16-bit gray, 170 KiB, 2.4 GiB to
    # decode before this budget; RGBA, 340 KiB, 2.0 GiB), a rotated 40 MP photo, and small photos
    side = int(MAX_PIXELS ** 0.5)
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "gray16.png").write_bytes(crafted_png(side, side, 0, 16))
    (tmp_path / "A" / "rgba.png").write_bytes(crafted_png(side, side, 6, 8))
    (tmp_path / "A" / "photo40mp.jpg").write_bytes(rotated(Image.new("RGB", (7300, 5480), (200, 30, 40)), "JPEG"))
    for index in range(3):
        (tmp_path / "A" / f"{index}.jpg").write_bytes(rotated(Image.new("RGB", (100, 100), (index, 9, 9)), "JPEG"))
    keys = ["A/gray16.png", "A/rgba.png", "A/photo40mp.jpg", "A/0.jpg", "A/1.jpg", "A/2.jpg"]

    # WHEN a fresh worker runs its partition function over them
    measured = worker_peak(tmp_path, keys, "A/0.jpg")

    # THEN the crafted files are quarantined, every real photo (the 40 MP one too) gets features,
    # and the worker's memory grew by less than the budget of one image
    assert measured["reasons"] == [Reason.OVER_MEMORY_BUDGET] * 2 + [None] * 4
    assert measured["growth"] <= MAX_DECODE_BYTES, f"peak growth {measured['growth'] / 2**20:.0f} MiB"

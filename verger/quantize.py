"""`verger quantize`: the int8 model an int8 batch runs, made once from calibration photos.

NNCF's post-training quantization of the same converted graph the fp32 engines run, with the
settings that kept what users see within the bar in the spike (series top-1 −0.5 point, PCA k
+2.3 %, where NNCF's defaults lost more): the performance preset (symmetric activations), full
bias correction, and the global pooling kept in fp32. NNCF is needed only here; the saved model
runs on OpenVINO alone.

Calibration photos are spread evenly over labels and, where file names carry Fruits-360's
rotation series, taken from the plain series only: the r_ series is what the series split holds
out, so the bench's held-out accuracy is never measured on photos the model was calibrated on.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

from emr_job.engines import default_cache_dir, weights_sha256
from emr_job.engines.int8_model import CALIBRATION_JSON, MODEL_XML, Int8Model, Int8ModelError, calibration_record, \
    read_int8_model
from emr_job.folders import list_image_keys
from emr_job.images import preprocess
from verger.suggest_evaluation import series_and_frames

DEFAULT_PHOTOS = 300
SETTINGS = {"method": "nncf post-training", "preset": "performance", "bias_correction": "full",
            "fp32_ops": ["ReduceMean"]}


def calibration_keys(keys: list[str], count: int) -> list[str]:
    """`count` keys (label/name), spread evenly over labels and within each label's sorted names;
    only the plain series where the folder has one.

    Examples
    --------
    >>> keys = [f"A/{n}_100.jpg" for n in range(10)] + ["A/r_1_100.jpg"] + [f"B/{n}.jpg" for n in range(4)]
    >>> calibration_keys(keys, 4)
    ['A/3_100.jpg', 'A/6_100.jpg', 'B/1.jpg', 'B/2.jpg']
    """
    if not keys:
        raise ValueError("no photos to calibrate on")
    series, _ = series_and_frames(np.array([key.rsplit("/", 1)[-1] for key in keys], object))
    plain = [key for key, name in zip(keys, series) if name == ""] or list(keys)
    by_label: dict[str, list[str]] = {}
    for key in sorted(plain):
        by_label.setdefault(key.rsplit("/", 1)[0], []).append(key)
    labels = sorted(by_label)
    base, extra = divmod(count, len(labels))
    chosen = []
    for position, label in enumerate(labels):
        names = by_label[label]
        wanted = base + (position < extra)
        if wanted >= len(names):
            chosen += names
        else:
            chosen += [names[index] for index in np.linspace(0, len(names) - 1, wanted + 2)[1:-1].round().astype(int)]
    return chosen


def quantize(images_dir: str, weights_path: str, out_dir: str, photos: int = DEFAULT_PHOTOS) -> Int8Model:
    """Quantize the converted graph of `weights_path` on photos of `images_dir` into
    out_dir/int8-<id>/ (an identical model already there is kept)."""
    import nncf
    import openvino as ov

    from emr_job.engines.onnx_runtime import onnx_model_path

    root = os.path.abspath(images_dir)
    keys = list_image_keys(root)
    if not keys:
        raise ValueError(f"no photos to calibrate on in {images_dir}")
    keys = calibration_keys(keys, photos)
    contents = {key: open(os.path.join(root, key), "rb").read() for key in keys}
    pixels = {key: preprocess(content) for key, content in contents.items()}
    usable = {key: array for key, array in pixels.items() if isinstance(array, np.ndarray)}
    if not usable:
        raise ValueError(f"none of the {len(keys)} calibration photos of {images_dir} decodes")
    sha = weights_sha256(weights_path)
    digests = {key: hashlib.sha256(contents[key]).hexdigest() for key in usable}
    settings = {**SETTINGS, "nncf": nncf.__version__, "openvino": ov.__version__}
    began = time.perf_counter()
    model = ov.convert_model(onnx_model_path(weights_path, sha, default_cache_dir()))
    batches = nncf.Dataset([array[None] for array in usable.values()])
    quantized = nncf.quantize(model, batches, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(usable),
                              fast_bias_correction=False, ignored_scope=nncf.IgnoredScope(types=["ReduceMean"]))
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".int8-", dir=out_dir)  # a folder appears whole or not at all
    ov.save_model(quantized, os.path.join(staging, MODEL_XML), compress_to_fp16=False)
    record = calibration_record(sha, digests, settings, staging)
    record["quantize_seconds"] = round(time.perf_counter() - began, 1)
    with open(os.path.join(staging, CALIBRATION_JSON), "w", encoding="utf-8") as file:
        json.dump(record, file, indent=1)
    target = os.path.join(out_dir, f"int8-{record['model_id']}")
    if os.path.isdir(target):  # the same model made before (kept), or an interrupted copy (replaced)
        try:
            model = read_int8_model(target)
            shutil.rmtree(staging)
            return model
        except Int8ModelError:
            shutil.rmtree(target)
    os.replace(staging, target)
    return read_int8_model(target)

"""The ONNX Runtime and OpenVINO engines give the Keras reference's features on real photos (bf16: close)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emr_job.engines import load_extractor
from emr_job.engines.precision import choose_precision, cpu_flags

pytestmark = pytest.mark.integration

SHARED = Path(__file__).resolve().parents[3] / "shared"
WEIGHTS = os.environ.get(
    "VERGER_WEIGHTS", str(SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
)
IMAGES = Path(os.environ.get("VERGER_IMAGES", str(SHARED / "data" / "fruits-360")))
CLASSES = 16
PER_CLASS = 4


def preprocess(path: Path) -> np.ndarray:
    """The contract's preprocessing: RGB, PIL bicubic to 224x224, x / 127.5 - 1."""
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1  # (224, 224, 3)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    if not os.path.isfile(WEIGHTS) or not IMAGES.is_dir():
        pytest.fail(f"needs the genuine weights ({WEIGHTS}) and Fruits-360 ({IMAGES}); set VERGER_WEIGHTS / VERGER_IMAGES")
    folders = sorted(folder for folder in IMAGES.iterdir() if folder.is_dir())
    chosen = folders[:: max(1, len(folders) // CLASSES)][:CLASSES]
    paths = [path for folder in chosen for path in sorted(folder.glob("*.jpg"))[:PER_CLASS]]
    return np.stack([preprocess(path) for path in paths])  # (64, 224, 224, 3)


def test_onnx_features_equal_the_keras_reference_on_real_photos(photos, tmp_path):
    # GIVEN 64 real photos from 16 classes and the genuine weights
    assert photos.shape == (CLASSES * PER_CLASS, 224, 224, 3)
    # WHEN both engines extract features (ONNX converted fresh into an empty cache)
    reference = load_extractor(WEIGHTS, "keras", threads=2)(photos)  # (64, 1280)
    converted = load_extractor(WEIGHTS, "onnx", threads=2, cache_dir=str(tmp_path))(photos)  # (64, 1280)
    # THEN every image's features agree: cosine >= 0.9999 and max abs diff <= 1e-3
    cosine = (reference * converted).sum(axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(converted, axis=1)
    )
    assert cosine.min() >= 0.9999, f"worst cosine {cosine.min():.6f}"
    assert np.abs(reference - converted).max() <= 1e-3
    # AND the features are not degenerate (distinct per image, non-negative after ReLU6 + pooling)
    assert reference.min() >= 0 and np.unique(reference.round(3), axis=0).shape[0] == len(photos)


def test_onnx_engine_reloads_from_the_cache_in_a_new_process_with_the_same_features(photos, tmp_path):
    # GIVEN the ONNX model converted once into a cache folder
    first = load_extractor(WEIGHTS, "onnx", threads=1, cache_dir=str(tmp_path))(photos[:8])
    cached = sorted(path.name for path in tmp_path.iterdir())
    # WHEN the same cache is used from a fresh session (no new conversion)
    from emr_job.engines.onnx_runtime import cached_model_path, onnx_extractor
    from emr_job.engines import weights_sha256

    path = cached_model_path(weights_sha256(WEIGHTS), str(tmp_path))
    again = onnx_extractor(path, threads=1)(photos[:8])
    # THEN exactly one model file is cached and it gives identical features
    assert cached == [os.path.basename(path)]
    np.testing.assert_array_equal(again, first)


def cosine_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))


def test_openvino_fp32_features_equal_the_keras_reference_on_real_photos(photos):
    # GIVEN 64 real photos and the genuine weights
    # WHEN the Keras reference and OpenVINO at fp32 (the default engine and precision) extract features
    reference = load_extractor(WEIGHTS, "keras", threads=2)(photos)  # (64, 1280)
    openvino = load_extractor(WEIGHTS, "openvino", threads=2, precision="fp32")(photos)  # (64, 1280)
    # THEN the feature contract holds: cosine >= 0.9999 and max abs diff <= 1e-3 for every photo
    assert cosine_rows(reference, openvino).min() >= 0.9999
    assert np.abs(reference - openvino).max() <= 1e-3


def test_openvino_bf16_stays_close_to_fp32_where_the_cpu_computes_bf16(photos):
    # GIVEN a CPU with native bf16 (otherwise there is nothing to measure: bf16 would be refused)
    try:
        choose_precision("bf16", cpu_flags())
    except ValueError as refused:
        pytest.skip(f"no native bf16 on this CPU ({refused}); the selection is unit-tested")
    # WHEN OpenVINO extracts the same photos at fp32 and at bf16
    fp32 = load_extractor(WEIGHTS, "openvino", threads=2, precision="fp32")(photos)  # (64, 1280)
    bf16 = load_extractor(WEIGHTS, "openvino", threads=2, precision="bf16")(photos)  # (64, 1280)
    # THEN bf16 really ran (features differ) yet stays close: mean cosine >= 0.97, worst >= 0.9,
    # and every photo's nearest other photo by fp32 features keeps its label under bf16
    cosine = cosine_rows(fp32, bf16)
    assert not np.array_equal(fp32, bf16)
    assert cosine.mean() >= 0.97 and cosine.min() >= 0.9, (cosine.mean(), cosine.min())
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    agree = nearest_label(fp32, labels) == nearest_label(bf16, labels)
    assert np.mean(agree) >= 0.95


def nearest_label(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return labels[similarity.argmax(axis=1)]

"""MobileNetV2 feature extractors: numpy batch in, numpy features out, one per Python worker.

The Spark job only batches and checks; which runtime computes the features is chosen here:

- ``keras``: the reference (TensorFlow), slow to import and to run.
- ``onnx``: the same Keras graph converted once to ONNX and run by ONNX Runtime; equal to the
  reference within cosine 0.9999 / max abs diff 1e-3 (proven by
  tests/integration/test_engines_real.py). TensorFlow is imported only to convert.
- ``openvino`` (default): that ONNX file run by OpenVINO, equal to the reference within the same
  bounds at fp32 and faster on this hardware; the only engine with bf16 and int8 paths
  (`precision`; int8 runs a model made by `verger quantize`, `int8_model`).

`threads` is the number of cores Spark gives this Python worker (e.g. ``spark.task.cpus``); the
engine never uses more, so concurrent workers do not oversubscribe the machine. ``None`` leaves the
choice to the runtime (all cores): fine for one process, wrong next to other workers.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from contract.layout import FEATURE_DIM, INPUT_SIZE
from emr_job.engines.int8_model import MODEL_BIN, Int8Model, check_made_from, file_sha256, read_int8_model
from emr_job.engines.precision import DEFAULT_PRECISION, cpu_flags, choose_precision
from emr_job.engines.weights_file import WeightsError, validate_weights

__all__ = [
    "ENGINES", "Extractor", "WeightsError", "check_batch", "check_precision", "load_extractor", "weights_sha256",
]

Extractor = Callable[[np.ndarray], np.ndarray]
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)
DEFAULT_ENGINE = "openvino"
CACHE_ENV = "VERGER_CACHE_DIR"

_loaded: dict[tuple, Extractor] = {}
_seen: dict[tuple, tuple] = {}
_load_lock = threading.Lock()


def _file_identity(path: str) -> tuple[int, int]:
    """(size, mtime) of the file, or (-1, -1) when missing, so validation names the problem."""
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def weights_sha256(path: str) -> str:
    """Hex sha256 of the weights file: the key of every cached conversion and loaded model."""
    return file_sha256(path)


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "verger")


def check_batch(images: np.ndarray) -> None:
    """Raise ValueError unless `images` is a float32 (n, 224, 224, 3) batch.

    Examples
    --------
    >>> check_batch(np.zeros((2, 224, 224, 3), np.float32))
    >>> check_batch(np.zeros((2, 100, 100, 3), np.uint8))
    Traceback (most recent call last):
    ValueError: expected (n, 224, 224, 3) float32, got (2, 100, 100, 3) uint8
    """
    if images.ndim != 4 or images.shape[1:] != INPUT_SHAPE or images.dtype != np.float32:
        raise ValueError(
            f"expected (n, {', '.join(map(str, INPUT_SHAPE))}) float32, "
            f"got {tuple(images.shape)} {images.dtype}"
        )


def load_extractor(
    weights_path: str,
    engine: str = DEFAULT_ENGINE,
    threads: int | None = None,
    cache_dir: str | None = None,
    precision: str = DEFAULT_PRECISION,
    int8_model: str | None = None,
) -> Extractor:
    """The feature extractor for these weights, built once per process and reused.

    Parameters
    ----------
    weights_path
        Local Keras HDF5 weights of MobileNetV2 1.0/224 include_top=False; checked first.
    engine
        One of ENGINES.
    threads
        Cores this worker may use (intra-op threads); None lets the runtime use all cores.
    cache_dir
        Where converted models are kept; default ``$VERGER_CACHE_DIR`` or ``~/.cache/verger``.
    precision
        ``fp32`` (the contract) or ``bf16`` (openvino only, and only where this CPU computes bf16
        natively: checked here, on the worker that runs it). Resolve ``auto`` with
        `choose_precision` once per batch, so every worker of a batch runs the same precision.
        ``int8`` (openvino only) runs `int8_model`.
    int8_model
        Local folder of a model made by `verger quantize` from these weights (int8 only).

    Returns
    -------
    Extractor
        float32 (n, 224, 224, 3) preprocessed images -> float32 (n, 1280) features. The same
        object for the same (weights sha256, engine, threads, precision, int8 model) in this process.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    # Spark calls this once per task: an unchanged file skips the check and the hash (~50 ms).
    model_folder = int8_model if precision == "int8" else None
    seen = (os.path.realpath(weights_path), *_file_identity(weights_path), engine, threads, precision,
            model_folder and (os.path.realpath(model_folder), *_file_identity(os.path.join(model_folder, MODEL_BIN))))
    if seen in _seen:
        return _loaded[_seen[seen]]
    check_precision(engine, precision)
    validate_weights(weights_path)
    sha = weights_sha256(weights_path)
    quantized = _checked_int8_model(model_folder, sha) if precision == "int8" else None
    key = (sha, engine, threads, precision, quantized and quantized.model_id)
    with _load_lock:
        if key not in _loaded:
            options = _BuildOptions(
                weights_path=weights_path,
                weights_sha256=key[0],
                threads=threads,
                cache_dir=cache_dir or default_cache_dir(),
                precision=precision,
                int8_model=quantized,
            )
            _loaded[key] = _checked(_BUILDERS[engine](options))
        _seen[seen] = key
        return _loaded[key]


@dataclass(frozen=True)
class _BuildOptions:
    """What a builder needs, so all builders share one signature."""

    weights_path: str
    weights_sha256: str
    threads: int | None
    cache_dir: str
    precision: str
    int8_model: Int8Model | None = None


def check_precision(engine: str, precision: str) -> None:
    """Raise ValueError unless `engine` can run `precision` on this CPU (``auto`` must be resolved).

    Examples
    --------
    >>> check_precision("onnx", "bf16")
    Traceback (most recent call last):
    ValueError: precision bf16 needs the openvino engine; onnx runs fp32 only
    """
    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"precision must be fp32, bf16 or int8 here (resolve auto first), got {precision!r}")
    if precision != "fp32" and engine not in LOW_PRECISION_ENGINES:
        raise ValueError(f"precision {precision} needs the {' or '.join(LOW_PRECISION_ENGINES)} engine; "
                         f"{engine} runs fp32 only")
    if precision == "bf16":
        choose_precision("bf16", cpu_flags())  # this worker's CPU, which may not be the driver's


def _checked_int8_model(folder: str | None, weights_sha: str) -> Int8Model:
    if not folder:
        raise ValueError("precision int8 needs an int8 model (--int8-model), made by `verger quantize`")
    model = read_int8_model(folder)
    check_made_from(model, weights_sha)
    return model


def _checked(run: Extractor) -> Extractor:
    """Wrap a raw engine with the input check and the output shape/dtype guarantee."""

    def extract(images: np.ndarray) -> np.ndarray:
        check_batch(images)  # (n, 224, 224, 3) float32
        if len(images) == 0:
            return np.empty((0, FEATURE_DIM), np.float32)
        features = np.asarray(run(np.ascontiguousarray(images)), dtype=np.float32)  # (n, 1280)
        if features.shape != (len(images), FEATURE_DIM):
            raise RuntimeError(f"engine returned {features.shape}, expected ({len(images)}, {FEATURE_DIM})")
        return features

    return extract


def _build_keras(options: _BuildOptions) -> Extractor:
    from emr_job.engines.keras_reference import keras_model

    model = keras_model(options.weights_path, options.threads)
    return lambda images: model.predict_on_batch(images)


def _build_onnx(options: _BuildOptions) -> Extractor:
    from emr_job.engines.onnx_runtime import onnx_extractor, onnx_model_path

    return onnx_extractor(onnx_model_path(options.weights_path, options.weights_sha256, options.cache_dir),
                          options.threads)


def _build_openvino(options: _BuildOptions) -> Extractor:
    from emr_job.engines.onnx_runtime import onnx_model_path
    from emr_job.engines.openvino_runtime import openvino_extractor

    if options.int8_model is not None:
        return openvino_extractor(options.int8_model.xml, options.threads, options.precision)
    return openvino_extractor(onnx_model_path(options.weights_path, options.weights_sha256, options.cache_dir),
                              options.threads, options.precision)


_BUILDERS: dict[str, Callable[[_BuildOptions], Extractor]] = {
    "keras": _build_keras,
    "onnx": _build_onnx,
    "openvino": _build_openvino,
}
LOW_PRECISION_ENGINES = ("openvino",)
ENGINES = tuple(_BUILDERS)

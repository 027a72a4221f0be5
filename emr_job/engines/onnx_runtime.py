"""The Keras model converted once to ONNX, cached on disk, and run by ONNX Runtime.

The cache key is the weights' sha256 plus the converter's versions, so new weights or a new
converter give a new file and an old file is never reused by mistake. Files are written to a
temporary name and renamed, so two workers converting at once each see a complete file.
"""
from __future__ import annotations

import os
import tempfile
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from contract.layout import INPUT_SIZE

OPSET = 17
INPUT_NAME = "images"


def converter_tag() -> str:
    """Versions that change the converted graph; read from metadata so TensorFlow is not imported."""
    return f"tf{_installed_version('tensorflow-cpu', 'tensorflow')}-tf2onnx{version('tf2onnx')}-opset{OPSET}"


def _installed_version(*distributions: str) -> str:
    """Version of the first installed distribution (TensorFlow ships as tensorflow or tensorflow-cpu)."""
    for distribution in distributions:
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    raise PackageNotFoundError(" or ".join(distributions))


def cached_model_path(weights_sha256: str, cache_dir: str) -> str:
    """Where the FP32 ONNX model of these weights, made by this converter, is kept."""
    return os.path.join(cache_dir, f"mobilenet_v2_{weights_sha256[:16]}_{converter_tag()}.onnx")


def onnx_model_path(weights_path: str, weights_sha256: str, cache_dir: str) -> str:
    """Path of the FP32 ONNX model for these weights, converting (with TensorFlow) only if absent."""
    path = cached_model_path(weights_sha256, cache_dir)
    if not os.path.exists(path):
        write_atomically(path, _convert(weights_path))
    return path


def write_atomically(path: str, payload: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _convert(weights_path: str) -> bytes:
    """Serialized ONNX of the Keras reference, traced through a tf.function (Keras 3 + tf2onnx)."""
    from emr_job.engines.keras_reference import keras_model

    model = keras_model(weights_path, threads=None)
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 3), tf.float32, name=INPUT_NAME),)
    function = tf.function(lambda images: model(images, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    return proto.SerializeToString()


def onnx_extractor(model_path: str, threads: int | None):
    """Run `model_path` with ONNX Runtime on at most `threads` cores; returns a numpy-in/out function."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per core
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: images})[0]

    return run

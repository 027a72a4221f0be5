"""The Keras reference model; the only place the engines import TensorFlow."""
from __future__ import annotations

import os

from contract.layout import INPUT_SIZE
from emr_job.engines.weights_file import WeightsError


def keras_model(weights_path: str, threads: int | None):
    """MobileNetV2 1.0/224, include_top=False, global average pooling, with these weights.

    Thread counts only apply if TensorFlow has not run anything yet in this process; after
    that TensorFlow keeps the ones it started with.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already initialised: its pools are fixed for the process
            pass
    try:
        return keras.applications.MobileNetV2(
            include_top=False, weights=weights_path, pooling="avg", input_shape=(INPUT_SIZE, INPUT_SIZE, 3)
        )
    except ValueError as error:
        raise WeightsError(f"Keras refused weights file {weights_path}: {error}") from error

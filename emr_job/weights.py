"""Turn the `--weights` argument into a checked local file, before any work starts."""
from __future__ import annotations

import os
from urllib.parse import urlparse

from emr_job import blobs
from emr_job.engines import default_cache_dir
from emr_job.engines_weights import WeightsError, validate_weights

KERAS_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
KERAS_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + KERAS_WEIGHTS_FILE
)
WEIGHTS_ENV = "VERGER_WEIGHTS"


def resolve_weights(spec: str | None) -> str:
    """A local path to valid MobileNetV2 no-top weights, from `imagenet`, a path or an `s3://` URI.

    Never falls back to random weights: no spec, a download that fails, or a file of the wrong
    shape raises WeightsError naming the problem.
    """
    spec = spec or os.environ.get(WEIGHTS_ENV)
    if not spec:
        raise WeightsError(
            f"no weights given: pass --weights (imagenet, a local .h5 path or s3:// URI) or set {WEIGHTS_ENV}"
        )
    if spec == "imagenet":
        path = download_imagenet()
    elif urlparse(spec).scheme == "s3":
        path = os.path.join(default_cache_dir(), "weights", os.path.basename(urlparse(spec).path))
        if not os.path.exists(path):
            try:
                blobs.write_bytes(path, blobs.read_bytes(spec))
            except Exception as error:  # any S3 failure: say which URI and why
                raise WeightsError(f"cannot download weights {spec}: {error}") from error
    else:
        path = os.path.abspath(blobs.local_path(spec))
    validate_weights(path)
    return path


def download_imagenet() -> str:
    """Keras's own cached download (`~/.keras/models`), which needs internet the first time."""
    from keras.utils import get_file

    try:
        return get_file(KERAS_WEIGHTS_FILE, KERAS_WEIGHTS_URL, cache_subdir="models")
    except Exception as error:
        raise WeightsError(
            f"cannot download the ImageNet weights ({error}); without internet pass a local .h5 path"
        ) from error

"""Turn the `--weights` (and `--int8-model`) arguments into checked local files, before any work starts."""
from __future__ import annotations

import hashlib
import os
from urllib.parse import urlparse

from contract.layout import WEIGHTS_CHECKSUM_METADATA
from emr_job import blobs
from emr_job.engines import default_cache_dir, weights_sha256
from emr_job.engines.int8_model import MODEL_FILES, Int8ModelError, check_made_from, read_int8_model
from emr_job.engines.weights_file import WeightsError, validate_weights

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
        path = download_s3(spec)
    else:
        path = os.path.abspath(blobs.local_path(spec))
    validate_weights(path)
    return path


def download_s3(uri: str) -> str:
    """Download once per object version (the cache is keyed by its ETag), and check the sha256
    that `python -m bootstrap.stage` records as object metadata."""
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    try:
        head = blobs.s3().head_object(Bucket=bucket, Key=key)
    except Exception as error:  # any S3 failure: say which URI and why
        raise WeightsError(f"cannot download weights {uri}: {error}") from error
    expected = head.get("Metadata", {}).get(WEIGHTS_CHECKSUM_METADATA)
    if not expected:
        raise WeightsError(
            f"weights {uri} carry no recorded sha256 (object metadata {WEIGHTS_CHECKSUM_METADATA!r}), so a "
            f"download could not be checked: stage them with `python -m bootstrap.stage --bucket {bucket} "
            f"--weights PATH`, which uploads the file with its checksum"
        )
    path = os.path.join(default_cache_dir(), "weights", head["ETag"].strip('"'), os.path.basename(key))
    try:
        if not os.path.exists(path):
            blobs.write_bytes(path, blobs.read_bytes(uri))
    except Exception as error:
        raise WeightsError(f"cannot download weights {uri}: {error}") from error
    if weights_sha256(path) != expected:
        os.remove(path)
        raise WeightsError(f"weights {uri} do not match the sha256 recorded when they were staged ({expected})")
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


def resolve_int8_model(spec: str | None, precision: str, weights_path: str) -> str | None:
    """The local folder of the int8 model an int8 batch runs (None at another precision), from a
    local folder or an s3:// prefix made by `verger quantize`; checked whole, unaltered (its
    calibration record holds the files' sha256) and made from `weights_path`."""
    if precision != "int8":
        if spec:
            raise Int8ModelError(f"--int8-model is for --precision int8 only (this batch runs {precision})")
        return None
    if not spec:
        raise Int8ModelError("precision int8 needs --int8-model: a folder made by `verger quantize` "
                             "(a local path or an s3:// prefix)")
    if urlparse(spec).scheme == "s3":
        folder = os.path.join(default_cache_dir(), "int8", hashlib.sha256(spec.encode()).hexdigest()[:16])
        try:
            read_int8_model(folder)
        except Int8ModelError:  # not downloaded yet, or an interrupted download: fetch every file again
            try:
                for name in MODEL_FILES:
                    blobs.write_bytes(os.path.join(folder, name), blobs.read_bytes(f"{spec.rstrip('/')}/{name}"))
            except Exception as error:
                raise Int8ModelError(f"cannot download the int8 model {spec}: {error}") from error
    else:
        folder = os.path.abspath(blobs.local_path(spec))
    check_made_from(read_int8_model(folder), weights_sha256(weights_path))
    return folder

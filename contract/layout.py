"""Where things live: bucket prefixes, image keys and labels, the warehouse, the step arguments.

Both halves read these names from here so a renamed prefix or argument cannot drift between them.
"""
from __future__ import annotations

import posixpath
import unicodedata

RAW_PREFIX = "raw/"
INBOX_PREFIX = "inbox/"
MANIFEST_PREFIX = "manifests/"
SUGGESTION_PREFIX = "suggestions/"
# Object metadata key under which staging records the weights' sha256 and the job checks it.
WEIGHTS_CHECKSUM_METADATA = "sha256"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Where photos are accepted: labelled under raw/<Label>/, unlabelled in the inbox. A full recompute
# rebuilds the store from both, since it replaces every stored row.
PHOTO_PREFIXES = (RAW_PREFIX, INBOX_PREFIX)

# Warehouse layout, relative to the warehouse URI (a local directory or s3://bucket/warehouse).
CATALOG_NAME = "verger"
NAMESPACE = "verger"
FEATURES_TABLE = "features"
PROJECTIONS_TABLE = "projections"
QUARANTINE_TABLE = "quarantine"
SUGGESTIONS_TABLE = "suggestions"
DATA_DIR = "data"
PCA_DIR = "pca"
CLASSIFIER_DIR = "classifier"
REPORTS_DIR = "reports"
LOCAL_CATALOG_FILE = "catalog.db"

# Table property that names the PCA version readers use; it switches in the same commit as the
# projections it describes.
CURRENT_PCA_PROPERTY = "verger.current-pca-version"
# Likewise the label classifier fitted with that PCA (empty when no photo was labelled).
CURRENT_CLASSIFIER_PROPERTY = "verger.current-classifier-version"

# The feature contract: changing any of these makes stored features incomparable.
FEATURE_MODEL = "mobilenet_v2_1.0_224_imagenet_notop_avgpool"
FEATURE_DIM = 1280
INPUT_SIZE = 224
RESIZE_FILTER = "bicubic"
FEATURE_VERSION = f"{FEATURE_MODEL}/{RESIZE_FILTER}/v1"
# Features table property naming the feature version of every row it holds: it switches only in
# a full recompute's commit, so a store never mixes precisions (or int8 calibrations) in one PCA.
FEATURE_VERSION_PROPERTY = "verger.feature-version"
DEFAULT_VARIANCE_TARGET = 0.95
# What the step's --precision accepts: fp32 is the contract; bf16 and int8 extract other feature
# versions; auto picks bf16 only where the CPU computes it fast (emr_job.engines.precision).
PRECISIONS = ("fp32", "bf16", "int8", "auto")
DEFAULT_PRECISION = "fp32"


def feature_version(precision: str, int8_model_id: str | None = None) -> str:
    """The version of the features a precision extracts: fp32 is the contract itself; bf16 and
    int8 are other features (an int8 model's are also those of its calibration, named by its id).

    Examples
    --------
    >>> feature_version("fp32") == FEATURE_VERSION, feature_version("int8", "0a1b2c3d4e5f").split("/")[-1]
    (True, 'int8-0a1b2c3d4e5f')
    """
    if precision == "fp32":
        return FEATURE_VERSION
    if precision == "bf16":
        return f"{FEATURE_VERSION}/bf16"
    if precision == "int8" and int8_model_id:
        return f"{FEATURE_VERSION}/int8-{int8_model_id}"
    raise ValueError(f"no feature version for precision {precision!r} (int8 needs its model's id)")


def is_image_key(key: str) -> bool:
    """True for an image file name; False for folder markers and other files.

    Examples
    --------
    >>> is_image_key("raw/Apple Red 1/r_12_100.JPG"), is_image_key("raw/Apple/"), is_image_key("raw/a.txt")
    (True, False, False)
    """
    return not key.endswith("/") and key.lower().endswith(IMAGE_SUFFIXES)


class UnsafeKey(ValueError):
    """A key or path part that could reach outside its folder or confuse whoever reads it."""


def key_problem(key: str) -> str | None:
    """Why `key` must not be used as a path below a folder or prefix, or None when it is safe.

    Refused: absolute keys, `..` segments (S3 keeps them literally, but a path join climbs out),
    and control characters (a newline forges log lines; NUL truncates a path).

    Examples
    --------
    >>> key_problem("raw/Apple Red 1/r_12_100.jpg") is None, key_problem("raw/Kiwi/..jpg") is None
    (True, True)
    >>> key_problem("inbox/../../../tmp/x.jpg"), key_problem("/etc/x.jpg")
    ("a '..' segment climbs out of its folder", 'an absolute path')
    >>> key_problem("raw/a" + chr(10) + "b.jpg")
    'control character U+000A'
    """
    if not key:
        return "an empty key"
    if key.startswith("/"):
        return "an absolute path"
    if ".." in key.split("/"):
        return "a '..' segment climbs out of its folder"
    for character in key:
        if unicodedata.category(character) == "Cc":
            return f"control character U+{ord(character):04X}"
    return None


def check_key(key: str) -> str:
    """`key` unchanged, or UnsafeKey naming the key and its problem."""
    problem = key_problem(key)
    if problem:
        raise UnsafeKey(f"unsafe key {key!r}: {problem}")
    return key


def label_of(key: str) -> str | None:
    """The label is the parent folder; photos in the inbox, at the root or directly under raw/ have none.

    Examples
    --------
    >>> label_of("raw/Apple Red 1/r_12_100.jpg"), label_of("Kiwi/1.jpg"), label_of("inbox/x.jpg")
    ('Apple Red 1', 'Kiwi', None)
    >>> label_of("raw/x.jpg"), label_of("x.jpg")
    (None, None)
    """
    folder = posixpath.dirname(key)
    if key.startswith(INBOX_PREFIX) or f"{folder}/" == RAW_PREFIX:
        return None
    return posixpath.basename(folder) or None


def manifest_key(batch_id: str) -> str:
    return f"{MANIFEST_PREFIX}{batch_id}.json"


def warehouse_path(warehouse: str, *parts: str) -> str:
    """Join below a warehouse URI or directory without mangling `s3://`; a part that would climb out
    (a photo key, a batch id) raises UnsafeKey, so every file the job writes stays below it.

    Examples
    --------
    >>> warehouse_path("s3://b/warehouse/", "reports", "x.json")
    's3://b/warehouse/reports/x.json'
    >>> warehouse_path("/wh", "suggestions", "inbox/../../../tmp/x.jpg.json")
    Traceback (most recent call last):
    ...
    contract.layout.UnsafeKey: unsafe key 'inbox/../../../tmp/x.jpg.json': a '..' segment climbs out of its folder
    """
    return "/".join([warehouse.rstrip("/"), *(check_key(part.strip("/")) for part in parts)])


class StepArgs:
    """Names of the EMR step's arguments: what the launcher passes and the job parses."""

    MANIFEST = "--manifest"
    WAREHOUSE = "--warehouse"
    WEIGHTS = "--weights"
    VARIANCE = "--variance"
    PRECISION = "--precision"
    INT8_MODEL = "--int8-model"


def step_arguments(manifest_uri: str, warehouse: str, weights: str, variance: float,
                   precision: str = DEFAULT_PRECISION, int8_model: str | None = None) -> list[str]:
    """The job's arguments after the entry script, identical on EMR, EMR Serverless and locally;
    `int8_model` (the folder or s3:// prefix `verger quantize` made) goes with precision int8 only.

    Examples
    --------
    >>> step_arguments("s3://b/manifests/x.json", "s3://b/warehouse", "s3://b/w.h5", 0.95)[-2:]
    ['--precision', 'fp32']
    >>> step_arguments("m", "wh", "w", 0.9, "int8", "s3://b/models/int8-0a1b2c3d4e5f")[-4:]
    ['--precision', 'int8', '--int8-model', 's3://b/models/int8-0a1b2c3d4e5f']
    """
    return [
        StepArgs.MANIFEST, manifest_uri,
        StepArgs.WAREHOUSE, warehouse,
        StepArgs.WEIGHTS, weights,
        StepArgs.VARIANCE, str(variance),
        StepArgs.PRECISION, precision,
        *([StepArgs.INT8_MODEL, int8_model] if int8_model else []),
    ]

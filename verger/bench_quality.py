"""What a lower precision changes for users, measured by `verger bench` on the same photos.

Verger's stored features are compared with the notebook baseline's (Keras FP32, the same bicubic
decode): cosine per photo, the PCA's k at the variance target, and held-out label accuracy on the
capture-session ("series") split of `verger evaluate-suggestions` — train on the plain rotation
series, test on the r_ series — with the shipped suggestion method (the job's own logistic-regression
fit and scores). All in numpy, so no Spark job adds to the benchmark's load.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from emr_job import store
from emr_job.classifier import unit_rows
from verger.suggest_evaluation import FILE_PATTERN, shipped_logits, training_pca


@dataclass(frozen=True)
class Quality:
    top1: float  # held-out accuracy on the series split
    k: int  # PCA components at the variance target, fitted on every photo
    test: int  # held-out photos


def baseline_features(out_dir: str, images_dir: str) -> dict[str, np.ndarray]:
    """The baseline's Parquet output keyed like Verger's image keys (<Label>/<name>)."""
    table = pq.read_table(out_dir, columns=["path", "features"])
    root = os.path.abspath(images_dir)
    keys = [path.split(root, 1)[-1].lstrip("/") for path in table.column("path").to_pylist()]
    return dict(zip(keys, stacked(table.column("features"))))


def verger_features(warehouse: str) -> dict[str, np.ndarray]:
    """The current features of a local warehouse, by image key."""
    table = store.read_columns(store.load_table(store.open_catalog(warehouse), "features"),
                               ["image_key", "features"])
    return dict(zip(table.column("image_key").to_pylist(), stacked(table.column("features"))))


def stacked(column) -> np.ndarray:
    """(n, d) float32 from an Arrow list<float> column."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(column), -1)


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (unit_rows(first) * unit_rows(second)).sum(axis=1)


def quality(keys: list[str], features: np.ndarray, variance: float) -> Quality:
    """k of the PCA fitted to all photos, and the shipped classifier's top-1 on the series split."""
    matches = [re.match(FILE_PATTERN, key.rsplit("/", 1)[-1]) for key in keys]
    test = np.array([bool(m and m.group(1)) for m in matches])
    labels = np.array([key.rsplit("/", 2)[-2] for key in keys])
    whole = training_pca(features, variance)
    if not test.any() or test.all():
        raise ValueError("the series split needs photos of both plain and r_ series")
    names, index = np.unique(labels, return_inverse=True)
    predicted = names[shipped_logits(features[~test], index[~test], features[test], len(names)).argmax(axis=1)]
    return Quality(top1=float((predicted == labels[test]).mean()), k=whole.k, test=int(test.sum()))


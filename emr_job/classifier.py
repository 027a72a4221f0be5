"""The label classifier: shrunk linear discriminant analysis on the photo's direction in PCA space
(unit-length PCA coordinates), fitted at refit time from per-label moments and versioned with the
PCA it was fitted alongside.

Why this method: see "Label suggestions" in docs/ARCHITECTURE.md (every candidate on every split).
In short: of the methods whose fit is one distributed pass, it held up best on splits that separate
capture sessions; a suggestion costs one (labels × k) product per photo whatever the size of the
store; and its fit needs only sums: each partition sends per-label counts and sums and one Σxxᵀ
(as `emr_job.pca` does), the driver solves one k × k system. No feature row reaches the driver.
"""
from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

from contract import layout
from emr_job import blobs, pca, store

if TYPE_CHECKING:  # the arithmetic and the model files need no Spark (`verger evaluate-suggestions`)
    from pyspark.sql import DataFrame

METHOD = "lda/pca-direction/shrunk"
# Weight of the scaled identity in the shrunk within-label covariance: the best of 0.02/0.1/0.2/0.5
# on the series and leave-one-series-out splits (ARCHITECTURE.md).
SHRINKAGE = 0.5
# Softmax temperature of the discriminant scores: the likelihood-optimal one on the leave-one-series-
# out split, whose training part (several sessions per label) is most like a real store.
TEMPERATURE = 33.5
# A photo whose top score is below this is flagged uncertain (series-split table in ARCHITECTURE.md).
UNCERTAIN_BELOW = 0.5
MOMENTS_SCHEMA = "labels array<string>, counts array<long>, sums binary, outer binary"


@dataclass
class Classifier:
    version: str
    pca_version: str
    labels: np.ndarray  # (C,) str, sorted
    weights: np.ndarray  # (C, k) float64, k = the PCA's components
    bias: np.ndarray  # (C,) float64
    rows_per_label: np.ndarray  # (C,) int
    exemplar_keys: np.ndarray  # (C,) str: the stored photo closest to each label's mean
    exemplars: np.ndarray  # (C, k) float64, unit rows: those photos' PCA directions
    shrinkage: float
    temperature: float
    fit_seconds: float
    created_at: str

    def logits(self, coordinates: np.ndarray) -> np.ndarray:
        """(n, k) PCA coordinates → (n, C) discriminant scores (before the temperature)."""
        return unit_rows(coordinates) @ self.weights.T + self.bias

    def probabilities(self, coordinates: np.ndarray) -> np.ndarray:
        """(n, k) PCA coordinates → (n, C) calibrated label probabilities."""
        return softmax(self.logits(coordinates) / self.temperature)

    def metadata(self) -> dict:
        return {
            "version": self.version, "pca_version": self.pca_version, "method": METHOD,
            "labels": self.labels.tolist(), "rows_per_label": self.rows_per_label.tolist(),
            "exemplar_keys": self.exemplar_keys.tolist(),
            "rows_fitted": int(self.rows_per_label.sum()), "shrinkage": self.shrinkage,
            "temperature": self.temperature, "fit_seconds": self.fit_seconds,
            "feature_version": layout.FEATURE_VERSION, "created_at": self.created_at,
        }


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero).

    Examples
    --------
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large scores.

    Examples
    --------
    >>> np.round(softmax(np.array([[0.0, np.log(3.0)]])), 3).tolist()
    [[0.25, 0.75]]
    """
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class TooFewRows(ValueError):
    """Not enough labelled rows to estimate a within-label spread."""


@dataclass
class LabelMoments:
    """Sums over labelled rows of unit-length PCA coordinates: enough to fit the discriminant."""

    labels: np.ndarray  # (C,) str, sorted
    counts: np.ndarray  # (C,) int
    sums: np.ndarray  # (C, d) float64: Σx per label
    outer: np.ndarray  # (d, d) float64: Σxxᵀ over every row

    def __add__(self, other: "LabelMoments") -> "LabelMoments":
        labels = np.union1d(self.labels, other.labels)
        counts, sums = np.zeros(len(labels), np.int64), np.zeros((len(labels), self.sums.shape[1]))
        for part in (self, other):
            at = np.searchsorted(labels, part.labels)
            counts[at] += part.counts
            sums[at] += part.sums
        return LabelMoments(labels, counts, sums, self.outer + other.outer)


def moments_of(coordinates: np.ndarray, labels: np.ndarray) -> LabelMoments:
    """Moments of one block of rows: (n, k) PCA coordinates and their (n,) labels."""
    x = unit_rows(coordinates)  # (n, k)
    names, index = np.unique(np.asarray(labels, object).astype(str), return_inverse=True)
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, index, x)
    return LabelMoments(names.astype(object), np.bincount(index, minlength=len(names)), sums, x.T @ x)


def fit_from_moments(moments: LabelMoments, pca_version: str, shrinkage: float = SHRINKAGE,
                     temperature: float = TEMPERATURE, fit_seconds: float = 0.0) -> Classifier:
    """Shrunk LDA with equal priors: the pooled within-label covariance, shrunk towards a scaled
    identity, solved once for every label's mean.

    Examples
    --------
    >>> x = np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]])
    >>> model = fit_from_moments(moments_of(x, np.array(["a", "a", "b", "b"])), "pca-1")
    >>> model.labels[model.logits(np.array([[2.0, 0.3]])).argmax()]
    'a'
    """
    n, labels = int(moments.counts.sum()), len(moments.labels)
    if n <= labels:
        raise TooFewRows(f"a classifier needs more labelled rows than labels: {n} rows, {labels} labels")
    means = moments.sums / moments.counts[:, None]  # (C, d)
    within = (moments.outer - (moments.sums.T @ means)) / (n - labels)  # (d, d)
    dim = len(within)
    shrunk = (1 - shrinkage) * within + shrinkage * np.trace(within) / dim * np.eye(dim)
    weights = np.linalg.solve(shrunk, means.T).T  # (C, d)
    unit_means = unit_rows(means)  # (C, d): stand-ins until `exemplars` picks real photos
    now = datetime.now(timezone.utc)
    return Classifier(
        version=f"classifier-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}", pca_version=pca_version,
        labels=np.asarray(moments.labels, object), weights=weights, bias=-0.5 * (weights * means).sum(axis=1),
        rows_per_label=np.asarray(moments.counts, np.int64),
        exemplar_keys=np.full(labels, "", object), exemplars=unit_means, shrinkage=shrinkage, temperature=temperature,
        fit_seconds=fit_seconds, created_at=now.isoformat(timespec="seconds"),
    )


def partial_moments(frames: Iterator[pd.DataFrame], model: pca.PcaModel) -> Iterator[pd.DataFrame]:
    """mapInPandas over (label, features): one row per partition with its LabelMoments."""
    total = None
    for frame in frames:
        if not frame.empty:
            part = moments_of(model.project(np.stack(frame["features"].to_numpy())), frame["label"].to_numpy())
            total = part if total is None else total + part
    if total is not None:
        yield pd.DataFrame({"labels": [list(total.labels)], "counts": [total.counts.tolist()],
                            "sums": [total.sums.tobytes()], "outer": [total.outer.tobytes()]})


def fit(features: DataFrame, model: pca.PcaModel) -> Classifier | None:
    """Fit over the labelled rows of a DataFrame (label, features) projected with `model`; None
    when no row is labelled."""
    started = time.perf_counter()
    shared = features.sparkSession.sparkContext.broadcast(model)
    partitions = max(1, features.sparkSession.sparkContext.defaultParallelism)
    partials = (features.where("label IS NOT NULL").select("label", "features").coalesce(partitions)
                .mapInPandas(lambda frames: partial_moments(frames, shared.value), MOMENTS_SCHEMA))

    def decode(row) -> LabelMoments:
        outer = np.frombuffer(row.outer)
        dim = int(round(np.sqrt(len(outer))))
        return LabelMoments(np.array(row.labels, object), np.array(row.counts, np.int64),
                            np.frombuffer(row.sums).reshape(len(row.labels), dim), outer.reshape(dim, dim))

    if partials.isEmpty():
        return None
    fitted = fit_from_moments(partials.rdd.map(decode).treeReduce(lambda a, b: a + b), model.version)
    fitted.exemplar_keys, fitted.exemplars = exemplars(features, fitted, shared)
    shared.unpersist()
    fitted.fit_seconds = time.perf_counter() - started
    return fitted


EXEMPLAR_SCHEMA = "label string, similarity double, image_key string, features array<double>"


def exemplars(features: DataFrame, model: Classifier, projection) -> tuple[np.ndarray, np.ndarray]:
    """Per label, the stored photo most similar to the label's mean (the app shows it beside the
    suggestion): each partition sends its best row per label, Spark keeps the best of those.
    `projection` is the broadcast PCA model."""
    from pyspark.sql import functions as F

    shared = features.sparkSession.sparkContext.broadcast((model.labels, model.exemplars))

    def best_per_label(frames):
        labels, means = shared.value
        for frame in frames:
            if frame.empty:
                continue
            x = unit_rows(projection.value.project(np.stack(frame["features"].to_numpy())))  # (n, k)
            label_index = np.searchsorted(labels, frame["label"].to_numpy())
            similarity = (x * means[label_index]).sum(axis=1)  # (n,)
            best = pd.Series(similarity).groupby(label_index).idxmax().to_numpy()
            yield pd.DataFrame({"label": labels[label_index[best]], "similarity": similarity[best],
                                "image_key": frame["image_key"].to_numpy()[best], "features": list(x[best])})

    chosen = (features.where("label IS NOT NULL").select("image_key", "label", "features")
              .mapInPandas(best_per_label, EXEMPLAR_SCHEMA)
              .groupBy("label").agg(F.max_by(F.struct("image_key", "features"), "similarity").alias("best"))
              .select("label", "best.image_key", "best.features").toPandas().set_index("label"))
    shared.unpersist()
    chosen = chosen.loc[list(model.labels)]
    return chosen["image_key"].to_numpy(object), np.stack(chosen["features"].to_numpy())


def current_version(catalog) -> str | None:
    """The classifier named by the projections table's pointer (None before the first fit)."""
    projections = store.load_table(catalog, layout.PROJECTIONS_TABLE)
    return (projections.properties.get(layout.CURRENT_CLASSIFIER_PROPERTY) or None) if projections else None


def folder(warehouse: str, version: str) -> str:
    return layout.warehouse_path(warehouse, layout.CLASSIFIER_DIR, version)


def save(model: Classifier, warehouse: str, seen: DataFrame) -> None:
    """Write the version's arrays, its metadata and the (image_key, etag, label) rows it was fitted
    on; readers only use it once the pointer names it."""
    buffer = io.BytesIO()
    np.savez(buffer, weights=model.weights, bias=model.bias, exemplars=model.exemplars)
    where = folder(warehouse, model.version)
    seen.where("label IS NOT NULL").select("image_key", "etag", "label").write.parquet(f"{where}/rows")
    blobs.write_bytes(f"{where}/model.npz", buffer.getvalue())
    blobs.write_bytes(f"{where}/model.json", json.dumps(model.metadata(), indent=1).encode())


def load(warehouse: str, version: str) -> Classifier:
    where = folder(warehouse, version)
    arrays = np.load(io.BytesIO(blobs.read_bytes(f"{where}/model.npz")))
    meta = json.loads(blobs.read_bytes(f"{where}/model.json"))
    return Classifier(
        version=meta["version"], pca_version=meta["pca_version"], labels=np.array(meta["labels"], object),
        weights=arrays["weights"], bias=arrays["bias"], rows_per_label=np.array(meta["rows_per_label"], np.int64),
        exemplar_keys=np.array(meta["exemplar_keys"], object), exemplars=arrays["exemplars"],
        shrinkage=meta["shrinkage"], temperature=meta["temperature"], fit_seconds=meta["fit_seconds"],
        created_at=meta["created_at"],
    )


def refit(features: DataFrame, model: pca.PcaModel, warehouse: str) -> tuple[dict[str, str], dict]:
    """At a PCA refit: fit, save, and return the pointer property for the projections commit and
    the report. No labelled row: the pointer is cleared (an old classifier belongs to an old PCA)."""
    try:
        fitted = fit(features, model)
    except TooFewRows as reason:
        return {layout.CURRENT_CLASSIFIER_PROPERTY: ""}, {"action": "none", "reason": str(reason)}
    if fitted is None:
        return {layout.CURRENT_CLASSIFIER_PROPERTY: ""}, {"action": "none", "reason": "no labelled photos"}
    save(fitted, warehouse, features)
    return {layout.CURRENT_CLASSIFIER_PROPERTY: fitted.version}, {
        "action": "fitted", "version": fitted.version, "method": METHOD, "labels": len(fitted.labels),
        "rows_fitted": int(fitted.rows_per_label.sum()), "fit_seconds": round(fitted.fit_seconds, 3),
    }

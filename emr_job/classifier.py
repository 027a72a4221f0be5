"""The label classifier: multinomial logistic regression on L2-normalised features, fitted at
refit time over every labelled row and versioned with the PCA it was fitted alongside.

Why this method: see "Label suggestions" in docs/ARCHITECTURE.md (every candidate on every split).
In short: of the candidates, it held up best on splits that separate capture sessions; its fit is
distributed (L-BFGS on the driver, each evaluation a tree-aggregated sum over cached blocks in the
executors; no feature row reaches the driver); and a suggestion costs one (labels × 1280) product
per photo, whatever the size of the store.
"""
from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

from contract import layout
from emr_job import blobs, logistic, pca, store

if TYPE_CHECKING:  # the arithmetic and the model files need no Spark (`verger evaluate-suggestions`)
    from pyspark.sql import DataFrame

METHOD = "logistic-regression/l2"
# Inverse L2 penalty in scikit-learn's convention (Σ log-loss + ‖W‖²/2C), the best of 1, 10 and 100
# on the session splits (ARCHITECTURE.md); `emr_job.logistic` minimises that objective divided by n.
PENALTY_C = 100.0
# Softmax temperature of the scores: the likelihood-optimal one on both session splits (series and
# leave-one-series-out).
TEMPERATURE = 0.75
# A photo whose top score is below this is flagged uncertain (session-split table in ARCHITECTURE.md).
UNCERTAIN_BELOW = 0.5


@dataclass
class Classifier:
    version: str
    pca_version: str
    labels: np.ndarray  # (C,) str, sorted
    weights: np.ndarray  # (C, d) float64, d = 1280 feature dimensions
    bias: np.ndarray  # (C,) float64
    rows_per_label: np.ndarray  # (C,) int
    exemplar_keys: np.ndarray  # (C,) str: each label's stored photo the classifier is surest of
    exemplars: np.ndarray  # (C, k) float64, unit rows: those photos' PCA directions
    penalty_c: float
    temperature: float
    iterations: int
    fit_seconds: float
    created_at: str
    converged: bool = True  # the fit met `logistic.GRADIENT_TOLERANCE` within its iterations
    feature_version: str = layout.FEATURE_VERSION  # its PCA's: the features it was fitted on

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features → (n, C) scores before the temperature."""
        return unit_rows(features) @ self.weights.T + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features → (n, C) calibrated label probabilities."""
        return softmax(self.logits(features) / self.temperature)

    def metadata(self) -> dict:
        return {
            "version": self.version, "pca_version": self.pca_version, "method": METHOD,
            "labels": self.labels.tolist(), "rows_per_label": self.rows_per_label.tolist(),
            "exemplar_keys": self.exemplar_keys.tolist(), "rows_fitted": int(self.rows_per_label.sum()),
            "penalty_c": self.penalty_c, "temperature": self.temperature, "iterations": self.iterations,
            "converged": self.converged, "fit_seconds": self.fit_seconds, "feature_version": self.feature_version, "created_at": self.created_at,
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
    """Not enough labelled photos to tell labels apart."""


def build(labels: np.ndarray, counts: np.ndarray, weights: np.ndarray, bias: np.ndarray, pca_version: str,
          iterations: int = 0, penalty_c: float = PENALTY_C, temperature: float = TEMPERATURE) -> Classifier:
    """A new classifier version from fitted coefficients (exemplars are chosen afterwards)."""
    now = datetime.now(timezone.utc)
    return Classifier(
        version=f"classifier-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}", pca_version=pca_version,
        labels=np.asarray(labels, object), weights=np.asarray(weights, np.float64), bias=np.asarray(bias, np.float64),
        rows_per_label=np.asarray(counts, np.int64), exemplar_keys=np.full(len(labels), "", object),
        exemplars=np.zeros((len(labels), 0)), penalty_c=penalty_c, temperature=temperature,
        iterations=iterations, fit_seconds=0.0, created_at=now.isoformat(timespec="seconds"),
    )


BLOCK_SCHEMA = "labels binary, rows binary, count int"


def training_blocks(frames: Iterator[pd.DataFrame], labels: np.ndarray) -> Iterator[pd.DataFrame]:
    """mapInPandas over (label, features): each Arrow batch as one block of label indices into
    `labels` and unit-length float32 rows, the form `logistic.block_sums` and `Classifier.logits`
    share."""
    for frame in frames:
        if not frame.empty:
            index = np.searchsorted(labels, frame["label"].to_numpy()).astype(np.int32)
            rows = unit_rows(np.stack(frame["features"].to_numpy())).astype(np.float32)
            yield pd.DataFrame({"labels": [index.tobytes()], "rows": [rows.tobytes()], "count": [len(index)]})


def decoded(block) -> tuple[np.ndarray, np.ndarray]:
    """A `training_blocks` row → (label indices, (n, d) rows)."""
    labels = np.frombuffer(block["labels"], np.int32)
    return labels, np.frombuffer(block["rows"], np.float32).reshape(len(labels), -1)


# Labelled rows up to this size (about 26,000 photos, the whole Test split) are fitted on the
# driver: there an L-BFGS evaluation costs no Spark job (~0.15 s each, a hundred per fit; on the
# whole Test split the refit's PCA step, which holds the fit, went from 61.3 s to 29.3 s). The
# bound keeps the driver's Python memory (the rows, their copy, the logits) under about 400 MiB.
DRIVER_FIT_BYTES = 128 * 2**20


def fits_on_driver(rows: int) -> bool:
    return rows * layout.FEATURE_DIM * np.dtype(np.float32).itemsize <= DRIVER_FIT_BYTES


def fit(features: DataFrame, projection: pca.PcaModel) -> Classifier | None:
    """Fit over the labelled rows of a DataFrame (image_key, label, features); None when no row is
    labelled. A small store's rows are collected and fitted on the driver (`fits_on_driver`).
    A larger one's stay in the executors as cached blocks; each L-BFGS evaluation broadcasts the
    coefficients and adds up the blocks' loss and gradient, so only the labels' names and counts
    and (C × d) numbers ever reach the driver."""
    started = time.perf_counter()
    labelled = features.where("label IS NOT NULL")
    counted = labelled.groupBy("label").count().orderBy("label").collect()
    if not counted:
        return None
    labels = np.array([row["label"] for row in counted], object)
    counts = np.array([row["count"] for row in counted], np.int64)
    if len(labels) < 2:
        raise TooFewRows(f"a classifier needs photos of at least two labels: only {labels[0]!r} is labelled")
    count = len(labels)
    blocks = (labelled.select("label", "features")
              .mapInPandas(lambda frames: training_blocks(frames, labels), BLOCK_SCHEMA).rdd.map(decoded))
    if fits_on_driver(int(counts.sum())):
        parts = blocks.collect()
        solution = logistic.fit_local(np.concatenate([rows for _, rows in parts]),
                                      np.concatenate([index for index, _ in parts]), count, PENALTY_C)
    else:
        solution = fit_in_executors(blocks, count)
    model = replace(build(labels, counts, *logistic.split(solution.theta, count), projection.version,
                          solution.iterations), converged=solution.converged,
                    feature_version=projection.feature_version)
    model = with_exemplars(model, exemplars(labelled, model, projection), list(labels))
    model.fit_seconds = time.perf_counter() - started
    return model


def fit_rows(rows: pd.DataFrame, projection: pca.PcaModel) -> Classifier | None:
    """`fit` over rows already on the driver (image_key, label, features), with no Spark job: the
    same fit (`logistic.fit_local`) and the same exemplars."""
    started = time.perf_counter()
    labelled = rows[rows["label"].notna()]
    if labelled.empty:
        return None
    labels, counts = np.unique(labelled["label"].to_numpy().astype(str), return_counts=True)
    if len(labels) < 2:
        raise TooFewRows(f"a classifier needs photos of at least two labels: only {labels[0]!r} is labelled")
    labels = labels.astype(object)
    index = np.searchsorted(labels, labelled["label"].to_numpy())
    solution = logistic.fit_local(unit_rows(np.stack(labelled["features"].to_numpy())), index, len(labels),
                                  PENALTY_C)
    model = replace(build(labels, counts, *logistic.split(solution.theta, len(labels)), projection.version,
                          solution.iterations), converged=solution.converged,
                    feature_version=projection.feature_version)
    chosen = next(surest_per_label(iter([labelled]), model, projection)).set_index("label")
    model = with_exemplars(model, chosen, list(labels))
    model.fit_seconds = time.perf_counter() - started
    return model


def fit_in_executors(blocks, count: int) -> logistic.Solution:
    """L-BFGS on the driver over (label indices, rows) blocks cached in the executors."""
    from pyspark import StorageLevel

    context = blocks.context
    # one task per core: a task costs ~0.1 s
    blocks = blocks.coalesce(context.defaultParallelism).persist(StorageLevel.MEMORY_AND_DISK)

    def evaluate(theta: np.ndarray) -> tuple[float, np.ndarray]:
        shared = context.broadcast(theta)
        summed = blocks.map(lambda block: (*logistic.block_sums(shared.value, *block, count), len(block[0]))
                            ).treeReduce(logistic.add)
        shared.destroy()
        return logistic.objective(summed, theta, count, PENALTY_C)

    dims = len(blocks.first()[1][0])
    solution = logistic.minimise(evaluate, np.zeros(count * dims + count))
    blocks.unpersist()
    return solution


EXEMPLAR_SCHEMA = "label string, score double, image_key string, direction array<double>"


def surest_per_label(frames: Iterator[pd.DataFrame], model: Classifier, projection: pca.PcaModel
                     ) -> Iterator[pd.DataFrame]:
    """mapInPandas over labelled (image_key, label, features): per label, the row whose score for
    its own label is highest, with its unit PCA direction."""
    for frame in frames:
        if frame.empty:
            continue
        features = np.stack(frame["features"].to_numpy())
        own = np.searchsorted(model.labels, frame["label"].to_numpy())
        score = np.take_along_axis(model.logits(features), own[:, None], 1)[:, 0]
        best = pd.Series(score).groupby(own).idxmax().to_numpy()
        yield pd.DataFrame({"label": model.labels[own[best]], "score": score[best],
                            "image_key": frame["image_key"].to_numpy()[best],
                            "direction": list(unit_rows(projection.project(features[best])))})


def exemplars(labelled: DataFrame, model: Classifier, projection: pca.PcaModel) -> pd.DataFrame:
    """Per label of `labelled`, the stored photo the classifier is surest of (the app shows it beside
    the suggestion), indexed by label (image_key, direction): each partition sends its best row per
    label, Spark keeps the best of those."""
    from pyspark.sql import functions as F

    shared = labelled.sparkSession.sparkContext.broadcast((model, projection))
    chosen = (labelled.select("image_key", "label", "features")
              .mapInPandas(lambda frames: surest_per_label(frames, *shared.value), EXEMPLAR_SCHEMA)
              .groupBy("label").agg(F.max_by(F.struct("image_key", "direction"), "score").alias("best"))
              .select("label", "best.image_key", "best.direction").toPandas().set_index("label"))
    shared.unpersist()
    return chosen


def with_exemplars(model: Classifier, chosen: pd.DataFrame, labels: list[str]) -> Classifier:
    """`model` with the exemplars of `labels` taken from `chosen` (`exemplars`' result); a label
    absent from it (no stored photo left) gets none: an empty key and a zero direction."""
    width = len(chosen["direction"].iloc[0]) if len(chosen) else model.exemplars.shape[1]
    keys = model.exemplar_keys.copy()
    directions = model.exemplars.copy() if model.exemplars.shape[1] == width else np.zeros((len(model.labels), width))
    for label in labels:
        at = int(np.searchsorted(model.labels, label))
        keys[at] = chosen.at[label, "image_key"] if label in chosen.index else ""
        directions[at] = chosen.at[label, "direction"] if label in chosen.index else 0.0
    return replace(model, exemplar_keys=keys, exemplars=directions)


def current_version(catalog) -> str | None:
    """The classifier named by the projections table's pointer (None before the first fit)."""
    projections = store.load_table(catalog, layout.PROJECTIONS_TABLE)
    return (projections.properties.get(layout.CURRENT_CLASSIFIER_PROPERTY) or None) if projections else None


def folder(warehouse: str, version: str) -> str:
    return layout.warehouse_path(warehouse, layout.CLASSIFIER_DIR, version)


def save(model: Classifier, warehouse: str, seen: DataFrame | pd.DataFrame) -> None:
    """Write the version's arrays, its metadata and the (image_key, etag, label) rows it was fitted
    on; readers only use it once the pointer names it."""
    buffer = io.BytesIO()
    np.savez(buffer, weights=model.weights, bias=model.bias, exemplars=model.exemplars)
    where = folder(warehouse, model.version)
    if isinstance(seen, pd.DataFrame):
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(seen.loc[seen["label"].notna(), ["image_key", "etag", "label"]],
                                            preserve_index=False), rows)
        blobs.write_bytes(f"{where}/rows/part-00000-driver.parquet", rows.getvalue())
    else:
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
        penalty_c=meta["penalty_c"], temperature=meta["temperature"], iterations=meta["iterations"],
        fit_seconds=meta["fit_seconds"], created_at=meta["created_at"], converged=meta.get("converged", True),
        feature_version=meta.get("feature_version", layout.FEATURE_VERSION),
    )


def refit(features: DataFrame | pd.DataFrame, model: pca.PcaModel, warehouse: str) -> tuple[dict[str, str], dict]:
    """At a PCA refit: fit (`fit_rows` for rows already on the driver, else `fit`), save, and
    return the pointer property for the projections commit and the report. No labelled row: the
    pointer is cleared (an old classifier belongs to an old PCA)."""
    on_driver = isinstance(features, pd.DataFrame)
    try:
        fitted = fit_rows(features, model) if on_driver else fit(features, model)
    except TooFewRows as reason:
        return {layout.CURRENT_CLASSIFIER_PROPERTY: ""}, {"action": "none", "reason": str(reason)}
    if fitted is None:
        return {layout.CURRENT_CLASSIFIER_PROPERTY: ""}, {"action": "none", "reason": "no labelled photos"}
    save(fitted, warehouse, features)
    return {layout.CURRENT_CLASSIFIER_PROPERTY: fitted.version}, {
        "action": "fitted", "version": fitted.version, "method": METHOD, "labels": len(fitted.labels),
        "rows_fitted": int(fitted.rows_per_label.sum()), "iterations": fitted.iterations,
        "converged": fitted.converged, "fit_seconds": round(fitted.fit_seconds, 3),
        "fitted_on": "driver" if on_driver or fits_on_driver(int(fitted.rows_per_label.sum())) else "executors",
    }

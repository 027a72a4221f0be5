"""Label suggestions for unlabelled photos: the current classifier's five best labels.

The classifier (`emr_job.classifier`) is fitted at refit time and named by a table property, so a
suggestion costs one (labels × 1280) product and one projection per photo in the executors,
whatever the size of the store. Beside each suggested label the app shows that label's exemplar
(the stored photo the classifier is surest of) and the photo's cosine similarity to it.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Iterable, Iterator
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from contract import layout
from emr_job import arrow_files, blobs, classifier, key_reads, pca, store
from emr_job.readers import current_features, current_pca_version

TOP_LABELS = 5
SUGGESTION_SCHEMA = (
    "image_key string, etag string, batch_id string, pca_version string, method string, "
    "labels array<string>, scores array<float>, uncertain boolean, neighbour_keys array<string>, "
    "neighbour_labels array<string>, neighbour_similarities array<float>, created_at string"
)


class NoClassifier(ValueError):
    """No classifier is current (no labelled photo yet, or a store from before classifiers)."""


def current_classifier(catalog, warehouse: str) -> classifier.Classifier:
    """The classifier the pointer names, checked against the current PCA version (both switch in
    one commit, so a mismatch means the warehouse was edited by hand)."""
    version, pca_version = classifier.current_version(catalog), current_pca_version(catalog)
    if pca_version is None:
        raise NoClassifier("no PCA model in this warehouse yet: run a batch of labelled photos first")
    if version is None:
        raise NoClassifier("no classifier for the current PCA: too few labelled photos at the last refit "
                           "(its report says why) or a store from before classifiers; run `verger refit`")
    model = classifier.load(store.warehouse_root(warehouse), version)
    if model.pca_version != pca_version:
        raise NoClassifier(f"classifier {version} was fitted with {model.pca_version}, but {pca_version} "
                           "is current: run `verger refit`")
    return model


def with_stored_exemplars(spark, catalog, model: classifier.Classifier, projection: pca.PcaModel
                          ) -> classifier.Classifier:
    """`model` with no exemplar erased since its refit: each label whose exemplar left the store
    gets the surest of its remaining photos (a lookup of C keys on the driver, and a scan of those
    labels' rows only when one is gone; the next refit picks them for good)."""
    cited = [key for key in model.exemplar_keys if key]
    if not cited:
        return model
    stored = set(key_reads.current_versions(catalog, cited)["image_key"])
    gone = [label for label, key in zip(model.labels, model.exemplar_keys) if key and key not in stored]
    if not gone:
        return model
    rows = current_features(spark, catalog).where(F.col("label").isin(gone))
    return classifier.with_exemplars(model, classifier.exemplars(rows, model, projection), gone)


def rank_labels(probabilities: np.ndarray, label_names: np.ndarray, top: int = TOP_LABELS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per photo, the `top` labels by probability, best first: names, scores, label indices.

    Examples
    --------
    >>> names, scores, _ = rank_labels(np.array([[0.2, 0.7, 0.1]]), np.array(["a", "b", "c"], object), 2)
    >>> names.tolist(), scores.tolist()
    ([['b', 'a']], [[0.7, 0.2]])
    """
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]  # (m, top)
    return label_names[order], np.take_along_axis(probabilities, order, 1), order


def suggest(model: classifier.Classifier, features: np.ndarray, projection: pca.PcaModel) -> dict[str, list | np.ndarray]:
    """(m, d) features → the suggestions-table columns for them: labels, scores, uncertain, and
    each suggested label's exemplar with the photo's cosine similarity to it (in PCA space)."""
    names, scores, order = rank_labels(model.probabilities(features), model.labels)
    similarity = classifier.unit_rows(projection.project(features)) @ model.exemplars.T  # (m, C)
    return {
        "labels": list(names), "scores": list(scores.astype(np.float32)),
        "uncertain": scores[:, 0] < classifier.UNCERTAIN_BELOW,
        "neighbour_keys": list(model.exemplar_keys[order]), "neighbour_labels": list(names),
        "neighbour_similarities": list(np.take_along_axis(similarity, order, 1).astype(np.float32)),
    }


def suggestion_frame(frame: pd.DataFrame, projection: pca.PcaModel, model: classifier.Classifier,
                     batch_id: str, created_at: str) -> pd.DataFrame:
    """(image_key, etag, features) rows → suggestions-table rows; the executors and the driver share it."""
    found = suggest(model, np.stack(frame["features"].to_numpy()), projection)
    return pd.DataFrame({
        "image_key": frame["image_key"].to_numpy(), "etag": frame["etag"].to_numpy(),
        "batch_id": batch_id, "pca_version": model.pca_version,
        "method": f"{classifier.METHOD}@{model.version}", **found, "created_at": created_at,
    })


def suggestion_rows(rows: DataFrame, projection: pca.PcaModel, model: classifier.Classifier,
                    batch_id: str) -> DataFrame:
    """This batch's (image_key, etag, features) → suggestions-table rows, computed in the executors."""
    shared = rows.sparkSession.sparkContext.broadcast((projection, model))
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            if not frame.empty:
                projection_, model_ = shared.value
                yield suggestion_frame(frame, projection_, model_, batch_id, created_at)

    return rows.select("image_key", "etag", "features").mapInPandas(run, SUGGESTION_SCHEMA)


def suggestion_json(row: dict) -> dict:
    """What the app reads for one photo."""
    return {
        "image_key": row["image_key"], "etag": row["etag"],
        "suggestions": [{"label": label, "score": round(float(score), 6)}
                        for label, score in zip(row["labels"], row["scores"])],
        "uncertain": bool(row["uncertain"]),
        "neighbours": [{"image_key": key, "label": label, "similarity": round(float(sim), 6)}
                       for key, label, sim in zip(row["neighbour_keys"], row["neighbour_labels"],
                                                  row["neighbour_similarities"])],
        "method": row["method"], "pca_version": row["pca_version"], "batch_id": row["batch_id"],
    }


def json_uri(source: str, warehouse: str, image_key: str) -> str:
    """s3://BUCKET/suggestions/<key>.json for an S3 source, else below the warehouse; a key that
    would climb out of suggestions/ raises UnsafeKey (`layout.warehouse_path` checks it).

    Examples
    --------
    >>> json_uri("s3://b", "s3://b/warehouse", "inbox/a.jpg"), json_uri("file:///img", "/wh", "inbox/a.jpg")
    ('s3://b/suggestions/inbox/a.jpg.json', '/wh/suggestions/inbox/a.jpg.json')
    """
    name = f"{layout.SUGGESTION_PREFIX}{image_key}.json"
    if urlparse(source).scheme == "s3":
        return layout.warehouse_path(f"s3://{urlparse(source).netloc}", name)
    return layout.warehouse_path(store.warehouse_root(warehouse), name)


def write_json_files(rows: Iterable[dict], source: str, warehouse: str) -> int:
    """One JSON per suggestions-table row, where the app reads it; returns how many were written."""
    written = 0
    for row in rows:
        body = suggestion_json(row)
        blobs.write_bytes(json_uri(source, warehouse, body["image_key"]), json.dumps(body, ensure_ascii=False).encode())
        written += 1
    return written


def suggest_for_batch(spark, catalog, warehouse: str, source: str, batch_id: str, rows: DataFrame | pd.DataFrame,
                      replace_filter=None) -> dict:
    """Suggest labels for this batch's unlabelled rows (image_key, etag, features), write one JSON
    per photo for the app, then commit them to the suggestions table (the commit is what tells a
    re-run a photo is done, so a run killed before it writes every JSON again). `replace_filter`
    (an Iceberg expression) deletes the rows it matches in the same commit. Rows in a pandas frame (a small
    batch extracted in the driver) are suggested in the driver, with no Spark job."""
    started = time.perf_counter()
    try:
        model = current_classifier(catalog, warehouse)
    except NoClassifier as reason:
        return {"action": "none", "reason": str(reason)}
    projection = pca.load(store.warehouse_root(warehouse), model.pca_version)
    model = with_stored_exemplars(spark, catalog, model, projection)
    if isinstance(rows, pd.DataFrame):
        photos, uncertain = suggest_on_driver(catalog, warehouse, source, batch_id, rows, projection, model,
                                              replace_filter)
    else:
        photos, uncertain = suggest_in_spark(catalog, warehouse, source, batch_id, rows, projection, model,
                                             replace_filter)
    if photos == 0:
        return {"action": "none", "reason": "no unlabelled photos in this batch"}
    return {
        "action": "suggested", "method": classifier.METHOD, "classifier_version": model.version,
        "photos": photos, "uncertain": uncertain, "pca_version": model.pca_version,
        "seconds": round(time.perf_counter() - started, 3),
    }


def suggest_in_spark(catalog, warehouse: str, source: str, batch_id: str, rows: DataFrame,
                     projection: pca.PcaModel, model: classifier.Classifier, replace_filter) -> tuple[int, int]:
    """Suggest, commit and write the JSON in the executors; (photos, uncertain)."""
    frame = suggestion_rows(rows, projection, model, batch_id).persist(StorageLevel.MEMORY_AND_DISK)
    counts = frame.selectExpr("count(*) AS photos", "count_if(uncertain) AS uncertain").first()
    if counts.photos:
        files = store.write_rows(frame, counts.photos, warehouse, layout.SUGGESTIONS_TABLE, batch_id)
        frame.foreachPartition(lambda partition: write_json_files((row.asDict() for row in partition), source,
                                                                  warehouse))
        store.commit_files(catalog, layout.SUGGESTIONS_TABLE, files, batch_id, delete_filter=replace_filter)
    frame.unpersist()
    return counts.photos, counts.uncertain


def suggest_on_driver(catalog, warehouse: str, source: str, batch_id: str, rows: pd.DataFrame,
                      projection: pca.PcaModel, model: classifier.Classifier, replace_filter) -> tuple[int, int]:
    """Suggest, commit and write the JSON here; (photos, uncertain)."""
    if rows.empty:
        return 0, 0
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    frame = suggestion_frame(rows, projection, model, batch_id, created_at)
    files = arrow_files.write_rows(frame, arrow_files.SUGGESTION_COLUMNS, catalog, warehouse,
                                   layout.SUGGESTIONS_TABLE, batch_id)
    write_json_files(frame.to_dict("records"), source, warehouse)
    store.commit_files(catalog, layout.SUGGESTIONS_TABLE, files, batch_id, delete_filter=replace_filter)
    return len(frame), int(frame["uncertain"].sum())

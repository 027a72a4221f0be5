"""The stored PCA inside a batch: apply it to new rows (with drift figures), or refit and switch.

Split from `job` so that `verger refit` and the batch share one implementation.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from contract import layout
from emr_job import classifier, pca, store
from emr_job.readers import current_features, current_pca_version, current_versions, table_rows, with_features
from emr_job.settings import JobSettings


def apply_pca(spark, catalog, manifest, settings, keys: list[str] | None, fresh: DataFrame | None = None) -> dict:
    """Refit (full mode, or no model yet) or project the rows of the batch's `keys` (None: every
    key) that have no projection under the current model; `fresh` holds the rows this run just
    extracted, so their features need not be read back."""
    stored = store.row_count(store.load_table(catalog, layout.FEATURES_TABLE))
    if stored < 2:
        return {"action": "none", "reason": f"{stored} feature row(s) stored: a PCA needs at least 2"}
    version = current_pca_version(catalog)
    if manifest.mode == "full" or version is None:
        return refit(spark, catalog, settings, manifest.batch_id)
    model = pca.load(store.warehouse_root(settings.warehouse), version)
    rows = rows_to_project(spark, catalog, manifest.batch_id, model.version, keys, fresh)
    projected = project(rows, model).persist(StorageLevel.MEMORY_AND_DISK)
    sums = projected.agg(
        F.count("*").alias("rows"),
        F.sum("total_sq").alias("total_sq"),
        F.sum("captured_sq").alias("captured_sq"),
    ).first()
    files = store.write_rows(
        projected.select("image_key", "etag", "pca_version", "pca", "batch_id"),
        sums.rows, settings.warehouse, layout.PROJECTIONS_TABLE, manifest.batch_id,
    )
    store.commit_files(catalog, layout.PROJECTIONS_TABLE, files, manifest.batch_id)
    projected.unpersist()
    total_sq, captured_sq = sums.total_sq or 0.0, sums.captured_sq or 0.0
    return {
        "action": "applied",
        "version": model.version,
        "k": model.k,
        "rows_projected": sums.rows,
        "drift": pca.drift(total_sq, captured_sq, total_sq - captured_sq, sums.rows, model.target,
                           settings.drift_margin),
    }


def rows_to_project(spark, catalog, batch_id: str, version: str, keys: list[str] | None,
                    fresh: DataFrame | None = None) -> DataFrame:
    """Current feature rows of `keys` with no projection under `version`: the batch's new rows,
    and any that a run killed before its projections commit left behind (decided on the short
    columns of the files that may hold the keys; features read only for rows not in `fresh`)."""
    done = (
        table_rows(spark, catalog, layout.PROJECTIONS_TABLE, "image_key string, etag string, pca_version string", keys)
        .where(F.col("pca_version") == version)
        .select("image_key", "etag")
    )
    wanted = current_versions(spark, catalog, keys).select("image_key", "etag").join(done, ["image_key", "etag"],
                                                                                       "left_anti")
    return with_features(spark, catalog, wanted, fresh, keys).withColumn("batch_id", F.lit(batch_id))


PROJECTION_SCHEMA = (
    "image_key string, etag string, batch_id string, pca_version string, pca array<float>, "
    "total_sq double, captured_sq double"
)


def project(rows: DataFrame, model: pca.PcaModel) -> DataFrame:
    """Projections plus each row's squared norms (centred, and captured) for the drift figures."""
    shared = rows.sparkSession.sparkContext.broadcast(model)

    def run(frames):
        model_ = shared.value
        for frame in frames:
            if frame.empty:
                continue
            x = np.stack(frame["features"].to_numpy()).astype(np.float64)  # (n, d)
            centred = x - model_.mean  # (n, d)
            coordinates = centred @ model_.components.T  # (n, k)
            yield pd.DataFrame(
                {
                    "image_key": frame["image_key"],
                    "etag": frame["etag"],
                    "batch_id": frame["batch_id"],
                    "pca_version": model_.version,
                    "pca": list(coordinates.astype(np.float32)),
                    "total_sq": (centred ** 2).sum(axis=1),
                    "captured_sq": (coordinates ** 2).sum(axis=1),
                }
            )

    return rows.mapInPandas(run, PROJECTION_SCHEMA)


def refit(spark, catalog, settings: JobSettings, batch_id: str = "refit") -> dict:
    """Fit the PCA (and the label classifier) over every current feature row, project them all, and
    switch both pointers in one commit."""
    features = current_features(spark, catalog).persist(StorageLevel.MEMORY_AND_DISK)
    model = pca.fit(features, settings.variance)
    warehouse = store.warehouse_root(settings.warehouse)
    pca.save(model, warehouse)
    pointer, fitted = classifier.refit(features, model, warehouse)
    began = time.perf_counter()
    projected = project(features.withColumn("batch_id", F.lit(batch_id)), model)
    files = store.write_rows(
        projected.select("image_key", "etag", "pca_version", "pca", "batch_id"),
        model.rows_fitted, settings.warehouse, layout.PROJECTIONS_TABLE, batch_id,
    )
    store.commit_files(
        catalog, layout.PROJECTIONS_TABLE, files, batch_id, replace=True,
        properties={layout.CURRENT_PCA_PROPERTY: model.version, **pointer},
    )
    features.unpersist()
    return {
        "action": "refit",
        "version": model.version,
        "k": model.k,
        "target": model.target,
        "rows_fitted": model.rows_fitted,
        "cumulative_at_k": round(float(model.explained_variance_ratio[: model.k].sum()), 6),
        "fit_seconds": round(model.fit_seconds, 3),
        "project_and_commit_seconds": round(time.perf_counter() - began, 3),
        "classifier": fitted,
    }

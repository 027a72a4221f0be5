"""The stored PCA inside a batch: apply it to new rows (with drift figures), or refit and switch.

Split from `job` so that `verger refit` and the batch share one implementation.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from contract import layout
from emr_job import arrow_files, classifier, driver_refit, key_reads, pca, store
from emr_job.commits import stored_feature_version
from emr_job.readers import (current_features, current_pca_version, current_versions, features_of, table_rows,
                            with_features)
from emr_job.settings import JobSettings


def apply_pca(spark, catalog, manifest, settings, keys: list[str] | None, fresh: DataFrame | None = None,
              fresh_pairs: frozenset[tuple[str, str]] = frozenset(),
              on_driver: dict[tuple[str, str], np.ndarray] | None = None) -> dict:
    """Refit (full mode, no model yet, or a model of other features than the store's) or project
    the rows of the batch's `keys` (None: every key) that have no projection under the current
    model; `fresh` holds the rows this run just extracted (`fresh_pairs` their (image_key, etag)
    for a keyed batch), so their features need not be read back. `on_driver` (a small batch
    extracted in the driver: its features) projects in the driver, with no Spark job."""
    table = store.load_table(catalog, layout.FEATURES_TABLE)
    stored = store.row_count(table)
    if stored < 2:
        return {"action": "none", "reason": f"{stored} feature row(s) stored: a PCA needs at least 2"}
    version = current_pca_version(catalog)
    if manifest.mode == "full" or version is None:
        return refit(spark, catalog, settings, manifest.batch_id)
    model = pca.load(store.warehouse_root(settings.warehouse), version)
    if model.feature_version != stored_feature_version(table):
        # a switching full recompute killed between its features commit and its refit
        return refit(spark, catalog, settings, manifest.batch_id)
    if on_driver is not None:
        count, total_sq, captured_sq = project_on_driver(catalog, manifest.batch_id, settings.warehouse, model,
                                                         keys, on_driver)
    else:
        count, total_sq, captured_sq = project_in_spark(spark, catalog, manifest.batch_id, settings.warehouse, model,
                                                        keys, fresh, fresh_pairs)
    return {
        "action": "applied",
        "version": model.version,
        "k": model.k,
        "rows_projected": count,
        "drift": pca.drift(total_sq, captured_sq, total_sq - captured_sq, count, model.target,
                           settings.drift_margin),
    }


def project_in_spark(spark, catalog, batch_id: str, warehouse: str, model: pca.PcaModel, keys: list[str] | None,
                     fresh: DataFrame | None, fresh_pairs: frozenset[tuple[str, str]]) -> tuple[int, float, float]:
    """Project and commit the batch's unprojected rows in the executors; (rows, total_sq, captured_sq)."""
    rows = rows_to_project(spark, catalog, batch_id, model.version, keys, fresh, fresh_pairs)
    if rows is None:
        return 0, 0.0, 0.0
    projected = project(rows, model).persist(StorageLevel.MEMORY_AND_DISK)
    sums = projected.agg(
        F.count("*").alias("rows"),
        F.sum("total_sq").alias("total_sq"),
        F.sum("captured_sq").alias("captured_sq"),
    ).first()
    files = store.write_rows(projected.select("image_key", "etag", "pca_version", "pca", "batch_id"),
                             sums.rows, warehouse, layout.PROJECTIONS_TABLE, batch_id)
    store.commit_files(catalog, layout.PROJECTIONS_TABLE, files, batch_id)
    projected.unpersist()
    return sums.rows, sums.total_sq or 0.0, sums.captured_sq or 0.0


def project_on_driver(catalog, batch_id: str, warehouse: str, model: pca.PcaModel, keys: list[str],
                      fresh: dict[tuple[str, str], np.ndarray]) -> tuple[int, float, float]:
    """Project and commit a small batch's unprojected rows here; (rows, total_sq, captured_sq)."""
    rows = key_reads.with_features(catalog, key_reads.unprojected(catalog, keys, model.version), fresh)
    if rows.empty:
        return 0, 0.0, 0.0
    projected = pca.projection_frame(rows.assign(batch_id=batch_id), model)
    files = arrow_files.write_rows(projected, arrow_files.PROJECTION_COLUMNS, catalog, warehouse,
                                   layout.PROJECTIONS_TABLE, batch_id)
    store.commit_files(catalog, layout.PROJECTIONS_TABLE, files, batch_id)
    return len(projected), float(projected["total_sq"].sum()), float(projected["captured_sq"].sum())


def rows_to_project(spark, catalog, batch_id: str, version: str, keys: list[str] | None,
                    fresh: DataFrame | None = None, fresh_pairs: frozenset[tuple[str, str]] = frozenset()
                    ) -> DataFrame | None:
    """Current feature rows of `keys` with no projection under `version` (None when there are
    none): the batch's new rows, and any that a run killed before its projections commit left
    behind. A keyed batch decides on the driver (`key_reads`), a listing one in Spark; features
    are read back only for rows not in `fresh`."""
    if keys is not None:
        rows = features_of(spark, catalog, key_reads.unprojected(catalog, keys, version), fresh, fresh_pairs)
    else:
        done = (
            table_rows(spark, catalog, layout.PROJECTIONS_TABLE, "image_key string, etag string, pca_version string")
            .where(F.col("pca_version") == version)
            .select("image_key", "etag")
        )
        wanted = current_versions(spark, catalog).select("image_key", "etag").join(done, ["image_key", "etag"],
                                                                                    "left_anti")
        rows = with_features(spark, catalog, wanted, fresh)
    return None if rows is None else rows.withColumn("batch_id", F.lit(batch_id))


PROJECTION_SCHEMA = (
    "image_key string, etag string, batch_id string, pca_version string, pca array<float>, "
    "total_sq double, captured_sq double"
)


def project(rows: DataFrame, model: pca.PcaModel) -> DataFrame:
    """`projection_frame` over a Spark frame, in the executors."""
    shared = rows.sparkSession.sparkContext.broadcast(model)

    def run(frames):
        model_ = shared.value
        for frame in frames:
            if not frame.empty:
                yield pca.projection_frame(frame, model_)

    return rows.mapInPandas(run, PROJECTION_SCHEMA)


def refit(spark, catalog, settings: JobSettings, batch_id: str = "refit") -> dict:
    """Fit the PCA (and the label classifier) over every current feature row, project them all, and
    switch both pointers in one commit: on the driver for a small store (`driver_refit`), in Spark
    otherwise."""
    table = store.load_table(catalog, layout.FEATURES_TABLE)
    if store.row_count(table) < 2:
        raise ValueError(f"{store.row_count(table)} feature row(s) stored: a PCA needs at least 2")
    version = stored_feature_version(table)
    if driver_refit.fits_on_driver(table):
        model, fitted, project_seconds = driver_refit.refit_on_driver(catalog, table, settings.warehouse,
                                                                      settings.variance, version, batch_id)
        return refit_report(model, fitted, project_seconds, "driver")
    features = current_features(spark, catalog).persist(StorageLevel.MEMORY_AND_DISK)
    model = replace(pca.fit(features, settings.variance), feature_version=version)
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
    return refit_report(model, fitted, time.perf_counter() - began, "executors")


def refit_report(model: pca.PcaModel, fitted: dict, project_seconds: float, computed_in: str) -> dict:
    return {
        "action": "refit",
        "computed_in": computed_in,
        "version": model.version,
        "k": model.k,
        "target": model.target,
        "rows_fitted": model.rows_fitted,
        "feature_version": model.feature_version,
        "cumulative_at_k": round(float(model.explained_variance_ratio[: model.k].sum()), 6),
        "fit_seconds": round(model.fit_seconds, 3),
        "project_and_commit_seconds": round(project_seconds, 3),
        "classifier": fitted,
    }

"""A small store's PCA refit on the driver, with no Spark job.

A store's first batch, and every full recompute, refits the PCA and the classifier and projects
every row. Through Spark that is a moments job, a collect of the labelled rows, an exemplar job,
a projection job and a write job, each with its task start-ups: about 20 s of fixed cost even for
2,000 photos. A store whose features fit the driver's bound (`classifier.DRIVER_FIT_BYTES`, about
26,000 photos) is read by pyiceberg into one float32 matrix instead, and the same functions (the
moments' eigendecomposition, `logistic.fit_local`, `pca.projection_frame`) run on it here.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from contract import layout
from emr_job import arrow_files, classifier, pca, store

CHUNK_ROWS = 4096  # float64 working copies of this many rows at a time, not of the whole matrix


def fits_on_driver(features_table) -> bool:
    return classifier.fits_on_driver(store.row_count(features_table))


def current_rows(features_table) -> pd.DataFrame:
    """image_key, etag, label, features of the newest row per key (a re-upload supersedes the
    older row), sorted by key; `features` holds views into one (n, d) float32 matrix."""
    table = features_table.scan(selected_fields=("image_key", "etag", "label", "batch_id", "ingested_at",
                                                 "features")).to_arrow()
    short = table.drop(["features"]).to_pandas()
    short["row"] = np.arange(len(short))
    newest = (short.sort_values(["ingested_at", "batch_id"], ascending=False, kind="stable")
              .drop_duplicates("image_key").sort_values("image_key"))
    lists = table.column("features").combine_chunks()
    matrix = np.asarray(lists.flatten(), np.float32).reshape(len(lists), layout.FEATURE_DIM)[newest["row"].to_numpy()]
    return pd.DataFrame({"image_key": newest["image_key"].to_numpy(), "etag": newest["etag"].to_numpy(),
                         "label": newest["label"].to_numpy(), "features": list(matrix)})


def fit_pca(rows: pd.DataFrame, target: float, feature_version: str) -> pca.PcaModel:
    """The moments of every row, summed in float64 chunks, and their eigendecomposition."""
    started = time.perf_counter()
    dims = layout.FEATURE_DIM
    total, outer = np.zeros(dims), np.zeros((dims, dims))
    for start in range(0, len(rows), CHUNK_ROWS):
        x = np.stack(rows["features"].to_numpy()[start:start + CHUNK_ROWS]).astype(np.float64)  # (rows, d)
        total += x.sum(axis=0)
        outer += x.T @ x
    return replace(pca.fit_from_moments(len(rows), total, outer, target, time.perf_counter() - started),
                   feature_version=feature_version)


def projected(rows: pd.DataFrame, model: pca.PcaModel, batch_id: str) -> pd.DataFrame:
    chunks = [pca.projection_frame(rows.iloc[start:start + CHUNK_ROWS].assign(batch_id=batch_id), model)
              for start in range(0, len(rows), CHUNK_ROWS)]
    return pd.concat(chunks, ignore_index=True)


def refit_on_driver(catalog, features_table, warehouse: str, target: float, feature_version: str, batch_id: str
                    ) -> tuple[pca.PcaModel, dict, float]:
    """Fit, save, project and commit with both pointers, as the Spark refit does; returns the
    model, the classifier's report and the seconds spent projecting and committing."""
    rows = current_rows(features_table)
    model = fit_pca(rows, target, feature_version)
    root = store.warehouse_root(warehouse)
    pca.save(model, root)
    pointer, fitted = classifier.refit(rows, model, root)
    began = time.perf_counter()
    files = arrow_files.write_rows(projected(rows, model, batch_id), arrow_files.PROJECTION_COLUMNS, catalog,
                                   warehouse, layout.PROJECTIONS_TABLE, batch_id)
    store.commit_files(catalog, layout.PROJECTIONS_TABLE, files, batch_id, replace=True,
                       properties={layout.CURRENT_PCA_PROPERTY: model.version, **pointer})
    return model, fitted, time.perf_counter() - began

"""A small keyed batch extracted in the driver process, with no Spark job.

Through Spark, 100 photos into a 22,588-row store took 23.9 s here for under 2 s of extraction: a
Python worker per core importing pandas and pyarrow and loading the model, and 49 JVM jobs (0.1–1 s
apiece, more the first time). A keyed batch with at most `DRIVER_PHOTOS` photos to extract is
therefore extracted in the driver by the executors' own `extract_frame`, and its projections and
suggestions computed there too (`projections`, `suggest`); the driver writes the Parquet files with
the columns Spark writes (`arrow_files`) and commits them in the same order (`commits`). Larger
batches, the listing modes and every PCA refit go through Spark.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from contract import layout
from contract.manifest import Manifest
from emr_job import arrow_files, key_reads
from emr_job.commits import TRANSIENT_REASONS, commit_extraction
from emr_job.engines import load_extractor
from emr_job.extract import extract_frame
from emr_job.projections import apply_pca
from emr_job.settings import JobSettings
from emr_job.suggest import suggest_for_batch

DRIVER_PHOTOS = 256  # one Spark partition's worth: the driver holds no more than a task would


def run_on_driver(spark, catalog, manifest: Manifest, todo: pd.DataFrame, keys: list[str],
                  replaced: dict[str, str], settings: JobSettings, ingested_at: str, report: dict) -> None:
    """Extract, commit, project and suggest a small keyed batch here; fills in `report`. (Only a
    PCA refit, when the store has none yet, and an unusual exemplar replacement use `spark`.)"""
    features: dict[tuple[str, str], np.ndarray] = {}
    if len(todo):
        extracted = extract_and_commit(catalog, manifest, todo, replaced, settings, ingested_at)
        report["images"].update(extracted.report["images"])
        report["seconds"].update(extracted.report["seconds"])
        features = extracted.features
    began = time.perf_counter()
    report["pca"] = apply_pca(spark, catalog, manifest, settings, keys, on_driver=features)
    report["seconds"]["pca"] = round(time.perf_counter() - began, 3)
    unsuggested = key_reads.with_features(catalog, key_reads.unsuggested(catalog, keys), features)
    if not unsuggested.empty:
        report["suggestions"] = suggest_for_batch(spark, catalog, settings.warehouse, manifest.source,
                                                  manifest.batch_id, unsuggested)


@dataclass
class Extracted:
    report: dict
    features: dict[tuple[str, str], np.ndarray]  # (image_key, etag) → features, of the rows committed


def extract_and_commit(catalog, manifest: Manifest, todo: pd.DataFrame, replaced: dict[str, str],
                       settings: JobSettings, ingested_at: str) -> Extracted:
    """Extract `todo` (image_key, etag, label, size) here and commit it as the Spark path does.
    The engine uses every core of this process: no executor task runs beside it."""
    began = time.perf_counter()
    extractor = load_extractor(settings.weights_path, settings.engine, None, precision=settings.precision,
                               int8_model=settings.int8_model)
    out = extract_frame(todo, manifest.source, extractor, settings.batch_size)
    extract_wall = time.perf_counter() - began
    began = time.perf_counter()
    out["batch_id"], out["ingested_at"] = manifest.batch_id, ingested_at
    good, bad = out[out["reason"].isna()], out[out["reason"].notna()]
    feature_files = arrow_files.write_rows(good, arrow_files.FEATURE_COLUMNS, catalog, settings.warehouse,
                                           layout.FEATURES_TABLE, manifest.batch_id)
    quarantine_files = arrow_files.write_rows(bad, arrow_files.QUARANTINE_COLUMNS, catalog, settings.warehouse,
                                              layout.QUARANTINE_TABLE, manifest.batch_id)
    transient = bad.loc[bad["reason"].isin(TRANSIENT_REASONS), "image_key"].tolist()
    commit_extraction(catalog, manifest, feature_files, quarantine_files, replaced, transient, ingested_at,
                      settings.feature_version)
    write_wall = time.perf_counter() - began
    by_reason = bad["reason"].value_counts().to_dict()
    report = {
        "images": {"new": len(good), "quarantined": len(bad),
                   "quarantined_by_reason": {reason: int(count) for reason, count in sorted(by_reason.items())}},
        "seconds": {"fetch_task_s": round(float(out["fetch_s"].sum()), 3),
                    "decode_task_s": round(float(out["decode_s"].sum()), 3),
                    "inference_task_s": round(float(out["infer_s"].sum()), 3),
                    "extract_wall": round(extract_wall, 3), "write_and_commit": round(write_wall, 3)},
    }
    features = dict(zip(zip(good["image_key"], good["etag"]), good["features"]))
    return Extracted(report, features)

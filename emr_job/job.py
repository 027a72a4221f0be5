"""One batch, end to end: manifest → features → projections → committed tables → report.

Every `verger` command and the EMR step go through `run_manifest`, so the local folder, the
embedded S3 API and a real cluster exercise the same code.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

import pandas as pd
from pyspark import SparkFiles, StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from contract import layout
from contract.manifest import Manifest
from emr_job import blobs, store
from emr_job.engines import load_extractor
from emr_job.extract import OUTPUT_SCHEMA, extract_partitions
from emr_job.images import Reason
from emr_job.projections import apply_pca
from emr_job.readers import latest_etags
from emr_job.settings import JobSettings
from emr_job.suggest import suggest_for_batch

ITEM_SCHEMA = "image_key string, etag string, label string"
ROWS_PER_PARTITION = 256
TRANSIENT_REASONS = (Reason.FETCH_FAILED,)


def run_manifest(spark: SparkSession, manifest: Manifest, settings: JobSettings) -> dict:
    """Process the batch and return its report (also written to reports/<batch_id>.json)."""
    started = time.perf_counter()
    ingested_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    catalog = store.open_catalog(settings.warehouse)
    latest = latest_etags(store.load_table(catalog, layout.FEATURES_TABLE))
    todo, already_quarantined = list(manifest.items), 0
    if manifest.mode == "incremental":
        fresh = [item for item in manifest.items if latest.get(item.key) != item.etag]
        rejected = quarantined_for_good(store.load_table(catalog, layout.QUARANTINE_TABLE))
        todo = [item for item in fresh if (item.key, item.etag) not in rejected]
        already_quarantined = len(fresh) - len(todo)

    report: dict = {
        "batch_id": manifest.batch_id,
        "mode": manifest.mode,
        "source": manifest.source,
        "ingested_at": ingested_at,
        "engine": {"name": settings.engine, "precision": settings.precision},
        "images": {
            "in_manifest": len(manifest.items),
            "already_present": len(manifest.items) - len(todo) - already_quarantined,
            "already_quarantined": already_quarantined,
        },
        "seconds": {},
    }
    extracted = new_rows = None
    if todo:
        extracted, extraction = extract_and_commit(spark, catalog, manifest, todo, settings, ingested_at)
        new_rows = extracted.where(F.col("reason").isNull())
        report["images"].update(extraction["images"])
        report["seconds"].update(extraction["seconds"])
    else:
        report["images"].update({"new": 0, "quarantined": 0, "quarantined_by_reason": {}})

    began = time.perf_counter()
    report["pca"] = apply_pca(spark, catalog, manifest, settings, new_rows, latest)
    report["seconds"]["pca"] = round(time.perf_counter() - began, 3)
    if new_rows is not None and any(layout.label_of(item.key) is None for item in todo):
        report["suggestions"] = suggest_for_batch(
            spark, catalog, settings.warehouse, manifest.source, manifest.batch_id,
            new_rows.where(F.col("label").isNull()),
        )
    if extracted is not None:
        extracted.unpersist()

    total = time.perf_counter() - started
    report["seconds"]["total"] = round(total, 3)
    report["images_per_second"] = round(len(todo) / total, 2) if todo else 0.0
    report["status"] = "complete"
    blobs.write_bytes(report_uri(settings.warehouse, manifest.batch_id), json.dumps(report, indent=1).encode())
    return report


def report_uri(warehouse: str, batch_id: str) -> str:
    return layout.warehouse_path(store.warehouse_root(warehouse), layout.REPORTS_DIR, f"{batch_id}.json")


def quarantined_for_good(quarantine_table) -> set[tuple[str, str]]:
    """(image_key, etag) pairs already rejected for a reason a retry cannot change."""
    if quarantine_table is None:
        return set()
    rows = store.read_columns(quarantine_table, ["image_key", "etag", "reason"]).to_pandas()
    rows = rows[~rows["reason"].isin(TRANSIENT_REASONS)]
    return set(zip(rows["image_key"], rows["etag"]))


def extract_and_commit(spark, catalog, manifest, todo, settings, ingested_at) -> tuple[DataFrame, dict]:
    """Features for `todo`, committed with their quarantine rows; returns every extracted row
    (persisted, for the PCA step; the caller unpersists it) and the extraction part of the report."""
    items = pd.DataFrame(
        {
            "image_key": [item.key for item in todo],
            "etag": [item.etag for item in todo],
            "label": [layout.label_of(item.key) for item in todo],
        }
    )
    cores = spark.sparkContext.defaultParallelism
    # Every core gets work as soon as there is an inference batch for it (a 100-photo batch on
    # one core would take twice as long); large batches get partitions of ROWS_PER_PARTITION.
    partitions = max(1, min(-(-len(todo) // settings.batch_size), cores),
                     min(-(-len(todo) // ROWS_PER_PARTITION), cores * 8))
    spark.sparkContext.addFile(settings.weights_path)
    weights_name = os.path.basename(settings.weights_path)
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    engine, precision, batch_size = settings.engine, settings.precision, settings.batch_size

    def loader():
        return load_extractor(SparkFiles.get(weights_name), engine, threads, precision=precision)

    extracted = (
        spark.createDataFrame(items, ITEM_SCHEMA)
        .repartition(partitions)
        .mapInPandas(extract_partitions(manifest.source, loader, batch_size), OUTPUT_SCHEMA)
        .withColumn("batch_id", F.lit(manifest.batch_id))
        .withColumn("ingested_at", F.lit(ingested_at))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    began = time.perf_counter()
    outcomes = extracted.groupBy("reason").agg(
        F.count("*").alias("rows"),
        F.sum("fetch_s").alias("fetch_s"),
        F.sum("decode_s").alias("decode_s"),
        F.sum("infer_s").alias("infer_s"),
    ).collect()
    extract_wall = time.perf_counter() - began

    by_reason = {row.reason: row.rows for row in outcomes if row.reason is not None}
    new_count = sum(row.rows for row in outcomes if row.reason is None)
    began = time.perf_counter()
    feature_files = store.write_rows(
        extracted.where(F.col("reason").isNull()).select(
            "image_key", "label", "etag", "batch_id", "ingested_at", "features"
        ),
        new_count, settings.warehouse, layout.FEATURES_TABLE, manifest.batch_id,
    )
    quarantine_files = store.write_rows(
        extracted.where(F.col("reason").isNotNull()).select(
            "image_key", "label", "etag", "batch_id", "ingested_at", "reason", "detail"
        ),
        sum(by_reason.values()), settings.warehouse, layout.QUARANTINE_TABLE, manifest.batch_id,
    )
    store.commit_files(
        catalog, layout.FEATURES_TABLE, feature_files, manifest.batch_id, replace=manifest.mode == "full"
    )
    store.commit_files(catalog, layout.QUARANTINE_TABLE, quarantine_files, manifest.batch_id)
    write_wall = time.perf_counter() - began

    def task_seconds(name: str) -> float:
        return round(sum(getattr(row, name) or 0.0 for row in outcomes), 3)

    return extracted, {
        "images": {
            "new": new_count,
            "quarantined": sum(by_reason.values()),
            "quarantined_by_reason": dict(sorted(by_reason.items())),
        },
        "seconds": {
            "fetch_task_s": task_seconds("fetch_s"),
            "decode_task_s": task_seconds("decode_s"),
            "inference_task_s": task_seconds("infer_s"),
            "extract_wall": round(extract_wall, 3),
            "write_and_commit": round(write_wall, 3),
        },
    }

"""One batch, end to end: manifest → features → projections → committed tables → report.

Every `verger` command and the EMR step go through `run_manifest`, so the local folder, the
embedded S3 API and a real cluster exercise the same code.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark import SparkFiles, StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from contract import layout
from contract.manifest import LISTING_MODES, Manifest
from emr_job import blobs, store
from emr_job.engines import load_extractor
from emr_job.erasure import erase, erase_removed, erasure_filter
from emr_job.extract import OUTPUT_SCHEMA, extract_partitions
from emr_job.images import Reason
from emr_job.listing import LISTING_SCHEMA, list_source
from emr_job.projections import apply_pca
from emr_job.readers import current_versions, table_rows, with_features
from emr_job.settings import JobSettings
from emr_job.suggest import suggest_for_batch

ROWS_PER_PARTITION = 256
TRANSIENT_REASONS = (Reason.FETCH_FAILED,)
DERIVED_TABLES = (layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE, layout.SUGGESTIONS_TABLE)


def run_manifest(spark: SparkSession, manifest: Manifest, settings: JobSettings) -> dict:
    """Process the batch and return its report (also written to reports/<batch_id>.json).

    Every step is safe to re-run: a batch killed between any two commits, run again, erases what
    it had to erase, extracts what is not stored yet, and projects and suggests every photo of its
    keys that has no projection or suggestion.
    """
    started = time.perf_counter()
    ingested_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    catalog = store.open_catalog(settings.warehouse)
    report: dict = {"batch_id": manifest.batch_id, "mode": manifest.mode, "source": manifest.source,
                    "ingested_at": ingested_at, "seconds": {},
                    "engine": {"name": settings.engine, "precision": settings.precision}}
    removals = [item for item in manifest.items if item.removed]
    if removals:
        report["erasure"] = erase_removed(spark, catalog, settings.warehouse, manifest.source,
                                          manifest.batch_id, removals)
    batch = plan_batch(spark, catalog, manifest, ingested_at)
    report["images"] = batch.counts
    if batch.erase_absent:
        report["erasure_of_absent"] = erase(spark, catalog, settings.warehouse, manifest.source,
                                            manifest.batch_id, batch.erase_absent)
    extracted = None
    if batch.todo_count:
        extraction, extracted = extract_and_commit(spark, catalog, manifest, batch, settings, ingested_at)
        report["images"].update(extraction["images"])
        report["seconds"].update(extraction["seconds"])
    else:
        report["images"].update({"new": 0, "quarantined": 0, "quarantined_by_reason": {}})
    batch.release()
    fresh = None if extracted is None else extracted.where(F.col("reason").isNull())

    began = time.perf_counter()
    report["pca"] = apply_pca(spark, catalog, manifest, settings, batch.keys, fresh)
    report["seconds"]["pca"] = round(time.perf_counter() - began, 3)
    unsuggested = unsuggested_rows(spark, catalog, batch.keys, fresh).persist(StorageLevel.MEMORY_AND_DISK)
    if not unsuggested.isEmpty():
        report["suggestions"] = suggest_for_batch(spark, catalog, settings.warehouse, manifest.source,
                                                  manifest.batch_id, unsuggested)
    unsuggested.unpersist()
    if extracted is not None:
        extracted.unpersist()

    total = time.perf_counter() - started
    report["seconds"]["total"] = round(total, 3)
    report["images_per_second"] = round(batch.todo_count / total, 2) if batch.todo_count else 0.0
    report["status"] = "complete"
    blobs.write_bytes(store.report_uri(settings.warehouse, manifest.batch_id), json.dumps(report, indent=1).encode())
    return report


@dataclass
class Batch:
    """What a batch has to extract, decided in Spark: `todo` (image_key, etag, label, stored_etag)
    stays distributed; only counts and, for the features commit, batch-sized key lists reach the driver."""

    todo: DataFrame
    todo_count: int
    counts: dict
    keys: list[str] | None  # the keys this batch covers (None: every key, for a listing mode)
    erase_absent: list[str]

    def release(self) -> None:
        self.todo.unpersist()


def plan_batch(spark: SparkSession, catalog, manifest: Manifest, ingested_at: str) -> Batch:
    """Compare the batch's (key, etag) pairs with the store without bringing the store to the
    driver: anti-joins against the current rows and the quarantine, read only from the files whose
    key bounds may hold the batch's keys (a listing mode compares the whole bucket with the whole
    store, still distributed)."""
    if manifest.mode in LISTING_MODES:
        candidates = list_source(spark, manifest.source).persist(StorageLevel.MEMORY_AND_DISK)
        keys = None
    else:
        added = [item for item in manifest.items if not item.removed]
        candidates = spark.createDataFrame(
            [(item.key, item.etag, layout.label_of(item.key), item.size) for item in added], LISTING_SCHEMA
        )
        keys = sorted({item.key for item in added})
    # read once: the counts below and a sweep's search for absent photos all use it
    stored = (current_versions(spark, catalog, keys)
              .select("image_key", F.col("etag").alias("stored_etag"), "ingested_at")
              .persist(StorageLevel.MEMORY_AND_DISK))
    with_stored = candidates.join(stored.drop("ingested_at"), "image_key", "left")
    if manifest.mode == "full":
        fresh = todo = with_stored
    else:
        fresh = with_stored.where(F.col("stored_etag").isNull() | (F.col("stored_etag") != F.col("etag")))
        rejected = table_rows(spark, catalog, layout.QUARANTINE_TABLE, "image_key string, etag string, reason string",
                              keys).where(~F.col("reason").isin(*TRANSIENT_REASONS)).select("image_key", "etag")
        todo = fresh.join(rejected, ["image_key", "etag"], "left_anti")
    todo = todo.persist(StorageLevel.MEMORY_AND_DISK)
    in_manifest, fresh_count, todo_count = candidates.count(), fresh.count(), todo.count()
    absent = []
    if manifest.mode == "sweep":
        # Lost ObjectRemoved events: stored photos the bucket no longer holds (rows committed after
        # this listing began are younger than `ingested_at` and stay).
        older = stored.where(F.col("ingested_at") < ingested_at)
        gone = older.join(candidates.select("image_key"), "image_key", "left_anti").select("image_key")
        absent = [row.image_key for row in gone.collect()]
    candidates.unpersist()
    stored.unpersist()
    counts = {"in_manifest": in_manifest, "already_present": in_manifest - fresh_count,
              "already_quarantined": fresh_count - todo_count}
    return Batch(todo, todo_count, counts, keys, absent)


def unsuggested_rows(spark: SparkSession, catalog, keys: list[str] | None, fresh: DataFrame | None = None) -> DataFrame:
    """The batch's unlabelled photos with no suggestion for their current version: this batch's new
    ones (their features from `fresh`), and any a killed earlier run left without one."""
    photos = current_versions(spark, catalog, keys).where(F.col("label").isNull()).select("image_key", "etag")
    done = table_rows(spark, catalog, layout.SUGGESTIONS_TABLE, "image_key string, etag string", keys)
    return with_features(spark, catalog, photos.join(done, ["image_key", "etag"], "left_anti"), fresh, keys)


def replaced_versions(batch: Batch, transient: list[str]) -> dict[str, str]:
    """key → new etag, for the keys this batch re-extracted over a stored older version (those
    whose fetch failed transiently keep their old version)."""
    rows = batch.todo.where(F.col("stored_etag").isNotNull()).select("image_key", "etag").collect()
    kept = set(transient)
    return {row.image_key: row.etag for row in rows if row.image_key not in kept}


def features_delete_filter(manifest: Manifest, replaced: dict[str, str], transient: list[str], ingested_at: str):
    """What the features commit deletes along with adding the new rows.

    Incremental and sweep: the previous versions of the keys re-extracted. Full: every row older
    than this run's start except those of transient failures, so a photo keeps its row when its
    re-fetch fails, and rows an incremental batch committed after the listing (younger) stay.
    """
    from pyiceberg.expressions import And, LessThan, Not

    if manifest.mode == "full":
        older = LessThan("ingested_at", ingested_at)
        return And(older, Not(store.keys_filter(transient))) if transient else older
    return store.keys_filter(replaced)


def extract_and_commit(spark, catalog, manifest, batch: Batch, settings, ingested_at) -> tuple[dict, DataFrame]:
    """Features for the batch's todo rows, committed with their quarantine rows (quarantine
    first: a photo is never without either); returns the extraction part of the report and the
    extracted rows, kept in memory for the PCA and suggestion steps (the caller unpersists them)."""
    cores = spark.sparkContext.defaultParallelism
    # Every core gets work as soon as there is an inference batch for it (a 100-photo batch on
    # one core would take twice as long); large batches get partitions of ROWS_PER_PARTITION.
    partitions = max(1, min(-(-batch.todo_count // settings.batch_size), cores),
                     min(-(-batch.todo_count // ROWS_PER_PARTITION), cores * 8))
    spark.sparkContext.addFile(settings.weights_path)
    weights_name = os.path.basename(settings.weights_path)
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    engine, precision, batch_size = settings.engine, settings.precision, settings.batch_size

    def loader():
        return load_extractor(SparkFiles.get(weights_name), engine, threads, precision=precision)

    extracted = (
        # the sizes let the executors refuse an oversized photo before the GET
        batch.todo.select("image_key", "etag", "label", "size")
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
    transient = [row.image_key for row in extracted.where(F.col("reason").isin(*TRANSIENT_REASONS))
                 .select("image_key").collect()]
    replaced = replaced_versions(batch, transient) if manifest.mode != "full" else {}
    store.commit_files(catalog, layout.QUARANTINE_TABLE, quarantine_files, manifest.batch_id)
    if replaced:  # superseded versions leave the derived tables before the features commit makes the batch final
        superseded = erasure_filter([], replaced)
        for name in DERIVED_TABLES:
            store.commit_files(catalog, name, [], manifest.batch_id, delete_filter=superseded)
    store.commit_files(catalog, layout.FEATURES_TABLE, feature_files, manifest.batch_id,
                       delete_filter=features_delete_filter(manifest, replaced, transient, ingested_at))
    write_wall = time.perf_counter() - began

    def task_seconds(name: str) -> float:
        return round(sum(getattr(row, name) or 0.0 for row in outcomes), 3)

    extraction = {
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
    return extraction, extracted

"""One batch, end to end: manifest → features → projections → committed tables → report.

Every `verger` command and the EMR step go through `run_manifest`, so the local folder, the
embedded S3 API and a real cluster exercise the same code.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from contract import layout
from contract.manifest import LISTING_MODES, Manifest
from emr_job import blobs, key_reads, store, warmup
from emr_job.commits import TRANSIENT_REASONS, check_feature_version, commit_extraction
from emr_job.driver_batch import DRIVER_PHOTOS, run_on_driver
from emr_job.erasure import erase, erase_removed
from emr_job.extract import OUTPUT_SCHEMA, extract_partitions
from emr_job.listing import list_source
from emr_job.projections import apply_pca
from emr_job.readers import current_versions, features_of, table_rows, with_features
from emr_job.settings import JobSettings
from emr_job.suggest import suggest_for_batch

ROWS_PER_PARTITION = 256


def run_manifest(spark: SparkSession, manifest: Manifest, settings: JobSettings) -> dict:
    """Process the batch and return its report (also written to reports/<batch_id>.json).

    Every step is safe to re-run: a batch killed between any two commits, run again, erases what
    it had to erase, extracts what is not stored yet, and projects and suggests every photo of its
    keys that has no projection or suggestion.
    """
    started = time.perf_counter()
    ingested_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    catalog = store.open_catalog(settings.warehouse)
    feature_version = settings.feature_version
    # before any work: features of another version would fail the commit after the extraction
    check_feature_version(store.load_table(catalog, layout.FEATURES_TABLE), feature_version, manifest.mode)
    # a listing batch (always extracted in the executors) has their model loaded while it is planned
    loader = warmup.model_loader(spark, settings) if manifest.mode in LISTING_MODES else None
    warming = None if loader is None else warmup.start(spark, loader)
    report: dict = {"batch_id": manifest.batch_id, "mode": manifest.mode, "source": manifest.source,
                    "ingested_at": ingested_at, "seconds": {},
                    "engine": {"name": settings.engine, "precision": settings.precision,
                               "feature_version": feature_version}}
    removals = [item for item in manifest.items if item.removed]
    if removals:
        report["erasure"] = erase_removed(spark, catalog, settings.warehouse, manifest.source,
                                          manifest.batch_id, removals)
    batch = plan_batch(spark, catalog, manifest, ingested_at)
    report["images"] = {**batch.counts, "new": 0, "quarantined": 0, "quarantined_by_reason": {}}
    if batch.erase_absent:
        report["erasure_of_absent"] = erase(spark, catalog, settings.warehouse, manifest.source,
                                            manifest.batch_id, batch.erase_absent)
    if batch.todo_rows is not None and batch.todo_count <= DRIVER_PHOTOS:
        report["executed_in"] = "driver"
        run_on_driver(spark, catalog, manifest, batch.todo_frame(), batch.keys, batch.replaced, settings,
                      ingested_at, report)
    else:
        report["executed_in"] = "executors"
        run_in_spark(spark, catalog, manifest, batch, settings, loader or warmup.model_loader(spark, settings),
                     ingested_at, report)
    if warming is not None:
        warming.join()

    total = time.perf_counter() - started
    report["seconds"]["total"] = round(total, 3)
    report["images_per_second"] = round(batch.todo_count / total, 2) if batch.todo_count else 0.0
    report["status"] = "complete"
    blobs.write_bytes(store.report_uri(settings.warehouse, manifest.batch_id), json.dumps(report, indent=1).encode())
    return report


def run_in_spark(spark: SparkSession, catalog, manifest: Manifest, batch: Batch, settings: JobSettings, loader,
                 ingested_at: str, report: dict) -> None:
    """Extract, commit, project and suggest the batch in the executors; fills in `report`."""
    extracted, quarantined = None, set()
    if batch.todo_count:
        extraction, extracted, quarantined = extract_and_commit(spark, catalog, manifest, batch, settings, loader,
                                                                ingested_at)
        report["images"].update(extraction["images"])
        report["seconds"].update(extraction["seconds"])
    batch.release()
    fresh = None if extracted is None else extracted.where(F.col("reason").isNull())
    fresh_pairs = frozenset((key, etag) for key, etag in batch.pairs() if key not in quarantined)

    began = time.perf_counter()
    report["pca"] = apply_pca(spark, catalog, manifest, settings, batch.keys, fresh, fresh_pairs)
    report["seconds"]["pca"] = round(time.perf_counter() - began, 3)
    unsuggested = unsuggested_rows(spark, catalog, batch.keys, fresh, fresh_pairs)
    if unsuggested is not None:
        report["suggestions"] = suggest_for_batch(spark, catalog, settings.warehouse, manifest.source,
                                                  manifest.batch_id, unsuggested)
        unsuggested.unpersist()
    if extracted is not None:
        extracted.unpersist()


@dataclass
class Batch:
    """What a batch has to extract (image_key, etag, label, size, stored_etag): `todo_rows` on the
    driver for a keyed batch, `todo` distributed for a listing one. `replaced` (key → new etag of
    the keys stored under an older version) is known on the driver for a keyed batch only."""

    todo_count: int
    counts: dict
    keys: list[str] | None  # the keys this batch covers (None: every key, for a listing mode)
    erase_absent: list[str]
    todo: DataFrame | None = None
    todo_rows: list[tuple] | None = None
    replaced: dict[str, str] | None = None

    def todo_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.todo_rows, columns=TODO_COLUMNS)

    def todo_in_spark(self, spark: SparkSession) -> DataFrame:
        return self.todo if self.todo is not None else spark.createDataFrame(self.todo_rows, TODO_SCHEMA)

    def pairs(self) -> list[tuple[str, str]]:
        """A keyed batch's todo (image_key, etag) pairs (none for a listing batch)."""
        return [(key, etag) for key, etag, *_ in self.todo_rows or []]

    def release(self) -> None:
        if self.todo is not None:
            self.todo.unpersist()


TODO_COLUMNS = ["image_key", "etag", "label", "size", "stored_etag"]
TODO_SCHEMA = "image_key string, etag string, label string, size long, stored_etag string"


def plan_batch(spark: SparkSession, catalog, manifest: Manifest, ingested_at: str) -> Batch:
    """Compare the batch's (key, etag) pairs with the store: on the driver for a manifest that
    names its keys (`emr_job.key_reads`), in Spark for a listing mode."""
    if manifest.mode in LISTING_MODES:
        return plan_listing(spark, catalog, manifest, ingested_at)
    return plan_keyed(catalog, manifest)


def plan_keyed(catalog, manifest: Manifest) -> Batch:
    """The keyed plan, on the driver: the short columns of the files whose key bounds may hold the
    batch's keys are read, and only the batch's own rows kept and compared."""
    added = [item for item in manifest.items if not item.removed]
    keys = sorted({item.key for item in added})
    versions = key_reads.current_versions(catalog, keys)
    stored = dict(zip(versions["image_key"], versions["etag"]))
    fresh = [(item.key, item.etag, layout.label_of(item.key), item.size, stored.get(item.key))
             for item in added if stored.get(item.key) != item.etag]
    quarantined = key_reads.key_rows(catalog, layout.QUARANTINE_TABLE, ("image_key", "etag", "reason"), keys)
    final = quarantined[~quarantined["reason"].isin(TRANSIENT_REASONS)]
    rejected = set(zip(final["image_key"], final["etag"]))
    todo = [row for row in fresh if (row[0], row[1]) not in rejected]
    counts = {"in_manifest": len(added), "already_present": len(added) - len(fresh),
              "already_quarantined": len(fresh) - len(todo)}
    replaced = {key: etag for key, etag, _, _, stored_etag in todo if stored_etag is not None}
    return Batch(len(todo), counts, keys, [], todo_rows=todo, replaced=replaced)


def plan_listing(spark: SparkSession, catalog, manifest: Manifest, ingested_at: str) -> Batch:
    """The listing plan: the whole bucket against the whole store, in anti-joins that stay
    distributed (only counts and a sweep's absent keys reach the driver)."""
    candidates = list_source(spark, manifest.source).persist(StorageLevel.MEMORY_AND_DISK)
    # read once: the counts below and a sweep's search for absent photos all use it
    stored = (current_versions(spark, catalog)
              .select("image_key", F.col("etag").alias("stored_etag"), "ingested_at")
              .persist(StorageLevel.MEMORY_AND_DISK))
    with_stored = candidates.join(stored.drop("ingested_at"), "image_key", "left")
    if manifest.mode == "full":
        fresh = todo = with_stored
    else:
        fresh = with_stored.where(F.col("stored_etag").isNull() | (F.col("stored_etag") != F.col("etag")))
        rejected = table_rows(spark, catalog, layout.QUARANTINE_TABLE, "image_key string, etag string, reason string"
                              ).where(~F.col("reason").isin(*TRANSIENT_REASONS)).select("image_key", "etag")
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
    return Batch(todo_count, counts, None, absent, todo=todo)


def unsuggested_rows(spark: SparkSession, catalog, keys: list[str] | None, fresh: DataFrame | None,
                     fresh_pairs: frozenset[tuple[str, str]]) -> DataFrame | None:
    """The batch's unlabelled photos with no suggestion for their current version (None when there
    are none, and then no Spark job ran for a keyed batch): this batch's new ones (their features
    from `fresh`), and any a killed earlier run left without one."""
    if keys is not None:
        rows = features_of(spark, catalog, key_reads.unsuggested(catalog, keys), fresh, fresh_pairs)
        return None if rows is None else rows.persist(StorageLevel.MEMORY_AND_DISK)
    photos = current_versions(spark, catalog).where(F.col("label").isNull()).select("image_key", "etag")
    done = table_rows(spark, catalog, layout.SUGGESTIONS_TABLE, "image_key string, etag string")
    rows = with_features(spark, catalog, photos.join(done, ["image_key", "etag"], "left_anti"), fresh)
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
    if rows.isEmpty():
        rows.unpersist()
        return None
    return rows


def replaced_versions(batch: Batch) -> dict[str, str]:
    """key → new etag, for the keys this batch extracts over a stored older version."""
    if batch.replaced is not None:
        return batch.replaced
    rows = batch.todo.where(F.col("stored_etag").isNotNull()).select("image_key", "etag").collect()
    return {row.image_key: row.etag for row in rows}


def extract_and_commit(spark, catalog, manifest, batch: Batch, settings, loader, ingested_at
                       ) -> tuple[dict, DataFrame, set[str]]:
    """Features for the batch's todo rows, committed with their quarantine rows (quarantine
    first: a photo is never without either); returns the extraction part of the report, the
    extracted rows, kept in memory for the PCA and suggestion steps (the caller unpersists them),
    and the keys quarantined."""
    cores = spark.sparkContext.defaultParallelism
    # Every core gets work as soon as there is an inference batch for it (a 100-photo batch on
    # one core would take twice as long); large batches get partitions of ROWS_PER_PARTITION.
    partitions = max(1, min(-(-batch.todo_count // settings.batch_size), cores),
                     min(-(-batch.todo_count // ROWS_PER_PARTITION), cores * 8))
    extracted = (
        # the sizes let the executors refuse an oversized photo before the GET
        batch.todo_in_spark(spark).select("image_key", "etag", "label", "size")
        .repartition(partitions)
        .mapInPandas(extract_partitions(manifest.source, loader, settings.batch_size), OUTPUT_SCHEMA)
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
        F.collect_list(F.when(F.col("reason").isNotNull(), F.col("image_key"))).alias("keys"),
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
    transient = [key for row in outcomes if row.reason in TRANSIENT_REASONS for key in row["keys"]]
    replaced = replaced_versions(batch) if manifest.mode != "full" else {}
    commit_extraction(catalog, manifest, feature_files, quarantine_files, replaced, transient, ingested_at,
                      settings.feature_version)
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
    return extraction, extracted, {key for row in outcomes for key in row["keys"]}

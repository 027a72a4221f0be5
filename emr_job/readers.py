"""What readers see: the current row per image, the current PCA version, and the export file."""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Set as AbstractSet
from functools import reduce

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from contract import layout
from emr_job import store



def current_pca_version(catalog) -> str | None:
    projections = store.load_table(catalog, layout.PROJECTIONS_TABLE)
    if projections is None:
        return None
    return projections.properties.get(layout.CURRENT_PCA_PROPERTY)


FEATURE_SCHEMA = (
    "image_key string, label string, etag string, batch_id string, ingested_at string, features array<float>"
)


def table_rows(spark: SparkSession, catalog, name: str, schema: str, keys: list[str] | None = None) -> DataFrame:
    """The columns named in `schema` of a table's live rows (only those are read). With `keys`,
    only those keys' rows, read from the files whose key bounds may hold them: a batch pays for
    its own keys, not for the store."""
    files = store.data_files(store.load_table(catalog, name), None if keys is None else store.keys_filter(keys))
    empty = spark.createDataFrame([], schema)
    if not files:
        return empty
    rows = spark.read.parquet(*files).select(*empty.columns)
    return rows if keys is None else rows.where(F.col("image_key").isin(*keys))


def current_features(spark: SparkSession, catalog, keys: list[str] | None = None,
                     schema: str = FEATURE_SCHEMA) -> DataFrame:
    """The latest row per image key (a re-upload with a new etag supersedes the old row); with
    `keys`, only theirs."""
    rows = table_rows(spark, catalog, layout.FEATURES_TABLE, schema, keys)
    newest_first = Window.partitionBy("image_key").orderBy(F.desc("ingested_at"), F.desc("batch_id"))
    return rows.withColumn("_rank", F.row_number().over(newest_first)).where("_rank = 1").drop("_rank")


VERSION_SCHEMA = "image_key string, etag string, label string, batch_id string, ingested_at string"


def current_versions(spark: SparkSession, catalog, keys: list[str] | None = None) -> DataFrame:
    """The current row per key without its features: five short columns are read, never the 1280 floats."""
    return current_features(spark, catalog, keys, VERSION_SCHEMA)


ROW_ID = ["image_key", "etag"]
ROW_ID_SCHEMA = "image_key string, etag string"


def with_features(spark: SparkSession, catalog, wanted: DataFrame, fresh: DataFrame | None) -> DataFrame:
    """image_key, etag, features of a listing batch's `wanted` (image_key, etag) rows, all
    distributed: from `fresh` (the rows this run extracted, still in memory) when there, else
    from the store."""
    if fresh is None:
        return current_features(spark, catalog).join(wanted, ROW_ID, "left_semi").select(*ROW_ID, "features")
    found = fresh.select(*ROW_ID, "features").join(wanted, ROW_ID, "left_semi")
    missing = wanted.join(fresh.select(*ROW_ID), ROW_ID, "left_anti")
    stored = current_features(spark, catalog).join(missing, ROW_ID, "left_semi")
    return found.unionByName(stored.select(*ROW_ID, "features"))


def features_of(spark: SparkSession, catalog, wanted: pd.DataFrame, fresh: DataFrame | None,
                fresh_pairs: AbstractSet[tuple[str, str]]) -> DataFrame | None:
    """image_key, etag, features of a keyed batch's `wanted` rows (decided on the driver), or None
    when none is wanted. The rows this run extracted (`fresh_pairs`) come from `fresh`, in memory;
    only rows an earlier, killed run committed without finishing them are read back, and only
    from the files whose key bounds may hold their keys."""
    pairs = set(zip(wanted["image_key"], wanted["etag"]))
    parts = []
    from_fresh = pairs & fresh_pairs
    if from_fresh:
        rows = fresh.select(*ROW_ID, "features")
        if from_fresh != fresh_pairs:
            rows = rows.join(spark.createDataFrame(sorted(from_fresh), ROW_ID_SCHEMA), ROW_ID, "left_semi")
        parts.append(rows)
    missing = sorted(pairs - fresh_pairs)
    if missing:
        stored = current_features(spark, catalog, sorted({key for key, _ in missing}))
        parts.append(stored.join(spark.createDataFrame(missing, ROW_ID_SCHEMA), ROW_ID, "left_semi")
                     .select(*ROW_ID, "features"))
    return reduce(DataFrame.unionByName, parts) if parts else None


def current_projections(spark: SparkSession, catalog) -> DataFrame | None:
    """Projections under the current PCA version, one row per (image_key, etag)."""
    version = current_pca_version(catalog)
    files = store.data_files(store.load_table(catalog, layout.PROJECTIONS_TABLE))
    if version is None or not files:
        return None
    return (
        spark.read.parquet(*files)
        .where(F.col("pca_version") == version)
        .dropDuplicates(["image_key", "etag"])
        .select("image_key", "etag", "pca", "pca_version")
    )


def export(spark: SparkSession, warehouse: str, out_file: str) -> int:
    """Write the current store as one Parquet file (written by one Spark task, not the driver)."""
    catalog = store.open_catalog(warehouse)
    rows = current_features(spark, catalog).drop("ingested_at")
    projections = current_projections(spark, catalog)
    if projections is not None:
        rows = rows.join(projections, ["image_key", "etag"], "left")
    out_file = os.path.abspath(out_file)
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(out_file))
    try:
        rows.repartition(1).sortWithinPartitions("image_key").write.mode("overwrite").parquet(staging)
        (part,) = glob.glob(os.path.join(staging, "part-*.parquet"))
        os.replace(part, out_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spark.read.parquet(out_file).count()

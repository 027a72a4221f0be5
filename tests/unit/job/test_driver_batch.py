"""What a keyed batch decides on the driver (emr_job.key_reads, job.plan_keyed) and the files the
driver writes for a small batch (emr_job.arrow_files), on a local and a Glue + S3 warehouse."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract import layout
from contract.manifest import ManifestItem, build_manifest
from emr_job import arrow_files, key_reads, store
from emr_job.job import plan_keyed


def commit_rows(catalog, warehouse: str, table: str, columns: pa.Schema, rows: list[dict], batch_id: str) -> None:
    frame = pd.DataFrame(rows)
    for name in columns.names:
        if name not in frame:
            frame[name] = [[0.5] * 4 if name == "features" else f"{name}-{batch_id}" for _ in rows]
    store.commit_files(catalog, table, arrow_files.write_rows(frame, columns, catalog, warehouse, table, batch_id),
                       batch_id)


def features(catalog, warehouse, rows: list[tuple[str, str, str]], batch_id: str) -> None:
    """Commit (image_key, etag, ingested_at) feature rows."""
    commit_rows(catalog, warehouse, layout.FEATURES_TABLE, arrow_files.FEATURE_COLUMNS,
                [{"image_key": key, "etag": etag, "ingested_at": at, "label": "A"} for key, etag, at in rows], batch_id)


def test_the_keyed_plan_extracts_new_and_changed_photos_and_retries_only_transient_failures(tmp_path):
    # GIVEN a store holding a and b, and a quarantine holding c (broken) and d (its fetch failed)
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    features(catalog, warehouse, [("raw/A/a.jpg", "1", "2026-01-01"), ("raw/A/b.jpg", "1", "2026-01-01")], "b0")
    commit_rows(catalog, warehouse, layout.QUARANTINE_TABLE, arrow_files.QUARANTINE_COLUMNS, [
        {"image_key": "raw/A/c.jpg", "etag": "1", "reason": "not_an_image"},
        {"image_key": "raw/A/d.jpg", "etag": "1", "reason": "fetch_failed"},
    ], "b0")

    # WHEN a manifest names a unchanged, b re-uploaded, c and d again, and a new e
    manifest = build_manifest("incremental", "file:///photos", [
        ManifestItem("raw/A/a.jpg", "1", 10), ManifestItem("raw/A/b.jpg", "2", 10), ManifestItem("raw/A/c.jpg", "1", 10),
        ManifestItem("raw/A/d.jpg", "1", 10), ManifestItem("raw/A/e.jpg", "1", 10),
    ])
    batch = plan_keyed(catalog, manifest)

    # THEN b, d and e are extracted, b as a replacement, and the counts say why the others are not
    assert sorted(batch.todo_frame()["image_key"]) == ["raw/A/b.jpg", "raw/A/d.jpg", "raw/A/e.jpg"]
    assert batch.replaced == {"raw/A/b.jpg": "2"}
    assert batch.counts == {"in_manifest": 5, "already_present": 1, "already_quarantined": 1}
    assert batch.todo_frame().set_index("image_key").loc["raw/A/e.jpg", "label"] == "A"


def test_the_current_version_of_a_key_is_its_newest_row(tmp_path):
    # GIVEN a key stored twice (an older and a newer ingestion) and another once
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    features(catalog, warehouse, [("raw/A/a.jpg", "new", "2026-02-01"), ("raw/A/b.jpg", "1", "2026-01-01")], "b1")
    features(catalog, warehouse, [("raw/A/a.jpg", "old", "2026-01-01")], "b0")
    # WHEN the driver reads the current versions of the batch's keys
    current = key_reads.current_versions(catalog, ["raw/A/a.jpg", "raw/A/b.jpg", "raw/A/z.jpg"])
    # THEN each key has one row, the newest
    assert list(zip(current["image_key"], current["etag"])) == [("raw/A/a.jpg", "new"), ("raw/A/b.jpg", "1")]


def test_features_come_from_memory_for_this_run_and_from_the_store_for_what_a_killed_run_left(tmp_path):
    # GIVEN a stored row a (a killed run committed it) and a row b this run extracted
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    features(catalog, warehouse, [("raw/A/a.jpg", "1", "2026-01-01")], "b0")
    fresh = {("raw/A/b.jpg", "1"): np.full(4, 7.0, np.float32)}
    wanted = pd.DataFrame({"image_key": ["raw/A/a.jpg", "raw/A/b.jpg"], "etag": ["1", "1"]})
    # WHEN both are wanted
    found = key_reads.with_features(catalog, wanted, fresh).set_index("image_key")
    # THEN a's features are read back and b's are the ones in memory
    assert found.loc["raw/A/a.jpg", "features"].tolist() == [0.5] * 4
    assert found.loc["raw/A/b.jpg", "features"].tolist() == [7.0] * 4


def test_a_driver_written_file_joins_a_table_spark_created_with_required_columns(warehouse):
    # GIVEN a features table created from a file where batch_id and ingested_at are required, as
    # Spark writes a column it filled with a literal
    uri, filesystem, base = warehouse
    catalog = store.open_catalog(uri)
    spark_like = pa.schema([field.with_nullable(field.name not in ("batch_id", "ingested_at"))
                            for field in arrow_files.FEATURE_COLUMNS])
    rows = pa.table({"image_key": ["raw/A/a.jpg"], "label": ["A"], "etag": ["1"], "batch_id": ["b0"],
                     "ingested_at": ["2026-01-01"], "features": [[0.5] * 4]}, schema=spark_like)
    filesystem.create_dir(f"{base}/spark", recursive=True)
    pq.write_table(rows, f"{base}/spark/part-0.parquet", filesystem=filesystem)
    first = f"{uri}/spark/part-0.parquet" if uri.startswith("s3") else f"file://{base}/spark/part-0.parquet"
    store.commit_files(catalog, layout.FEATURES_TABLE, [first], "b0")

    # WHEN the driver writes and commits a small batch to it
    features(catalog, warehouse[0], [("raw/A/b.jpg", "1", "2026-01-02")], "b1")

    # THEN both rows are live, and the driver's file has Spark's column names, order and types
    live = store.read_columns(store.load_table(catalog, layout.FEATURES_TABLE), ["image_key", "batch_id"])
    assert sorted(live.column("image_key").to_pylist()) == ["raw/A/a.jpg", "raw/A/b.jpg"]
    written = store.data_files(store.load_table(catalog, layout.FEATURES_TABLE))
    driver_file = next(path for path in written if path.endswith("-driver.parquet"))
    schema = store.file_schema(driver_file)
    assert schema.names == spark_like.names and schema.types == spark_like.types
    assert not schema.field("batch_id").nullable and schema.field("image_key").nullable


@pytest.mark.parametrize("rows", [0, 3])
def test_the_driver_writes_one_sorted_file_per_batch_or_none(tmp_path, rows):
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    frame = pd.DataFrame({"image_key": [f"raw/A/{n}.jpg" for n in reversed(range(rows))], "etag": ["1"] * rows,
                          "pca_version": ["v"] * rows, "pca": [np.ones(2, np.float32)] * rows, "batch_id": ["b"] * rows})
    files = arrow_files.write_rows(frame, arrow_files.PROJECTION_COLUMNS, catalog, warehouse,
                                   layout.PROJECTIONS_TABLE, "b")
    assert len(files) == min(rows, 1)
    if rows:
        keys = pq.read_table(files[0].removeprefix("file://")).column("image_key").to_pylist()
        assert keys == sorted(keys)


def test_a_repeated_read_is_answered_again_only_after_a_commit_changed_the_table(tmp_path, monkeypatch):
    # GIVEN a store with one row, read once
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    features(catalog, warehouse, [("raw/A/a.jpg", "1", "2026-01-01")], "b0")
    keys = ["raw/A/a.jpg", "raw/A/b.jpg"]
    assert key_reads.current_versions(catalog, keys)["image_key"].tolist() == ["raw/A/a.jpg"]
    scans = []
    real_scan = type(store.load_table(catalog, layout.FEATURES_TABLE)).scan
    monkeypatch.setattr(type(store.load_table(catalog, layout.FEATURES_TABLE)), "scan",
                        lambda table, *args, **kwargs: scans.append(1) or real_scan(table, *args, **kwargs))
    # WHEN the same keys are read again, then again after a commit adds one of them
    again = key_reads.current_versions(catalog, keys)
    features(catalog, warehouse, [("raw/A/b.jpg", "1", "2026-01-02")], "b1")
    after = key_reads.current_versions(catalog, keys)
    # THEN the repeat cost no scan, and the read after the commit sees the new row
    assert again["image_key"].tolist() == ["raw/A/a.jpg"] and after["image_key"].tolist() == keys
    assert len(scans) == 1

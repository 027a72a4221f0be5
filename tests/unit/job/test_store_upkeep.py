"""The store's commits, erasure and upkeep with the code the job uses, on a local warehouse (SQLite
catalog) and on the cloud path (pyiceberg's Glue catalog on moto's Glue, the warehouse on moto's
S3; Parquet written with pyarrow, as Spark here cannot reach S3)."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs

from contract import layout
from emr_job import store
from emr_job.erasure import erasure_filter
from emr_job.upkeep import Upkeep, maintain

EXPIRE_NOW = Upkeep(retention=timedelta(0), orphan_age=timedelta(0))


def write_batch(warehouse, keys: list[str], batch_id: str) -> list[str]:
    """One Parquet file in a fresh attempt directory, as the job's Spark write leaves it."""
    uri, filesystem, base = warehouse
    rows = pa.table({
        "image_key": keys, "etag": [f"e-{key}" for key in keys], "batch_id": [batch_id] * len(keys),
        "ingested_at": ["2026-11-23T00:00:00"] * len(keys),
        "features": pa.array([[float(i)] * 4 for i in range(len(keys))], pa.list_(pa.float32())),
    })
    relative = f"features/data/batch_id={batch_id}/{uuid.uuid4().hex}/part-0.parquet"
    filesystem.create_dir(f"{base}/{relative.rsplit('/', 1)[0]}", recursive=True)
    pq.write_table(rows.sort_by("image_key"), f"{base}/{relative}", filesystem=filesystem)
    return [layout.warehouse_path(store.warehouse_root(uri) if uri.startswith("s3") else f"file://{base}", relative)]


def keys_on_storage(warehouse) -> set[str]:
    """Every image key any Parquet file under the warehouse holds, referenced or not."""
    _, filesystem, base = warehouse
    found = set()
    for info in filesystem.get_file_info(fs.FileSelector(base, recursive=True)):
        if info.path.endswith(".parquet"):
            found |= set(pq.read_table(info.path, filesystem=filesystem, columns=["image_key"])
                         .column("image_key").to_pylist())
    return found


def live_keys(catalog) -> list[str]:
    table = store.load_table(catalog, layout.FEATURES_TABLE)
    return sorted(store.read_columns(table, ["image_key"]).column("image_key").to_pylist())


def test_an_erased_photo_is_gone_from_the_table_at_once_and_from_storage_after_expiry(warehouse):
    # GIVEN three committed batches (three files, three snapshots)
    catalog = store.open_catalog(warehouse[0])
    for number, keys in enumerate([["raw/A/1.jpg", "raw/A/2.jpg"], ["raw/B/1.jpg"], ["raw/B/2.jpg", "raw/C/1.jpg"]]):
        store.commit_files(catalog, layout.FEATURES_TABLE, write_batch(warehouse, keys, f"b{number}"), f"b{number}")

    # WHEN one photo is erased
    store.commit_files(catalog, layout.FEATURES_TABLE, [], "forget", delete_filter=erasure_filter(["raw/A/2.jpg"], {}))

    # THEN readers no longer see it, but the file an older snapshot reads still holds it …
    assert live_keys(catalog) == ["raw/A/1.jpg", "raw/B/1.jpg", "raw/B/2.jpg", "raw/C/1.jpg"]
    assert "raw/A/2.jpg" in keys_on_storage(warehouse)

    # WHEN upkeep runs with the retention elapsed
    report = maintain(catalog, warehouse[0], EXPIRE_NOW)[layout.FEATURES_TABLE]

    # THEN no data file on storage holds it; the rest is intact, in fewer files and one snapshot
    assert "raw/A/2.jpg" not in keys_on_storage(warehouse)
    assert live_keys(catalog) == ["raw/A/1.jpg", "raw/B/1.jpg", "raw/B/2.jpg", "raw/C/1.jpg"]
    assert report["before"]["data_files"] == 3 and report["after"]["data_files"] == 1
    assert report["after"]["snapshots"] == 1 and report["files_deleted"] >= 3


def test_upkeep_keeps_files_younger_than_the_safety_window_and_snapshots_within_retention(warehouse):
    # GIVEN two committed batches and the files of an attempt still in flight (written, not committed)
    catalog = store.open_catalog(warehouse[0])
    for number in range(2):
        store.commit_files(catalog, layout.FEATURES_TABLE, write_batch(warehouse, [f"raw/A/{number}.jpg"], f"b{number}"),
                           f"b{number}")
    write_batch(warehouse, ["raw/A/in-flight.jpg"], "b2")

    # WHEN upkeep runs with the default retention and safety window
    report = maintain(catalog, warehouse[0], Upkeep())[layout.FEATURES_TABLE]

    # THEN the in-flight file and the replaced files stay on storage, and the snapshots are kept
    assert "raw/A/in-flight.jpg" in keys_on_storage(warehouse)
    assert report["files_deleted"] == 0 and report["after"]["snapshots"] == report["before"]["snapshots"] + 1
    assert live_keys(catalog) == ["raw/A/0.jpg", "raw/A/1.jpg"]


@pytest.mark.parametrize("keys", [
    ["raw/Apple Crimson/1.jpg"],
    # more keys than pyiceberg prunes with in one `In`
    [f"raw/Apple Crimson/{i}.jpg" for i in range(5000)],
], ids=["one-key", "5000-keys"])
def test_a_key_filtered_scan_plans_only_the_files_that_may_hold_the_keys(warehouse, keys):
    # GIVEN files with disjoint key ranges sharing a 16-character prefix (the default bound truncation)
    catalog = store.open_catalog(warehouse[0])
    for label in ("Apple Braeburn", "Apple Crimson", "Apple Golden"):
        stored = [f"raw/{label}/{i}.jpg" for i in range(3)]
        store.commit_files(catalog, layout.FEATURES_TABLE, write_batch(warehouse, stored, label[-4:]), label[-4:])

    # WHEN the files for a batch's keys of one label are planned
    table = store.load_table(catalog, layout.FEATURES_TABLE)
    files = store.data_files(table, store.keys_filter(keys))

    # THEN only the file that may hold them is read
    assert len(files) == 1 and "batch_id=mson" in files[0]


def test_a_full_recompute_commit_keeps_younger_rows_and_rows_whose_refetch_failed(tmp_path):
    # GIVEN rows stored before a full recompute began, and one committed by a batch after its listing
    from contract.manifest import build_manifest
    from emr_job.commits import features_delete_filter

    warehouse = (str(tmp_path / "wh"), fs.LocalFileSystem(), str(tmp_path / "wh"))
    catalog = store.open_catalog(warehouse[0])
    store.commit_files(catalog, layout.FEATURES_TABLE, write_batch(warehouse, ["raw/A/1.jpg", "raw/A/2.jpg"], "old"), "old")
    late = write_batch(warehouse, ["raw/A/late.jpg"], "late")
    late_rows = pq.read_table(late[0].removeprefix("file://")).set_column(
        3, "ingested_at", pa.array(["2026-11-23T12:00:01"]))
    pq.write_table(late_rows, late[0].removeprefix("file://"))
    store.commit_files(catalog, layout.FEATURES_TABLE, late, "late")

    # WHEN the full recompute (started at 12:00:00) commits its rows, raw/A/2.jpg's re-fetch having failed
    full = build_manifest("full", "s3://verger-b", [], nonce="n")
    redone = write_batch(warehouse, ["raw/A/1.jpg"], "full")
    store.commit_files(catalog, layout.FEATURES_TABLE, redone, "full",
                       delete_filter=features_delete_filter(full, {}, ["raw/A/2.jpg"], "2026-11-23T12:00:00"))

    # THEN the re-extracted row replaced the old one, the failed photo and the late photo kept theirs
    rows = store.read_columns(store.load_table(catalog, layout.FEATURES_TABLE), ["image_key", "batch_id"]).to_pylist()
    assert sorted((row["image_key"], row["batch_id"]) for row in rows) == [
        ("raw/A/1.jpg", "full"), ("raw/A/2.jpg", "old"), ("raw/A/late.jpg", "late")]


def test_an_erasure_filter_over_thousands_of_superseded_versions_binds_without_overflowing():
    # GIVEN a batch that re-uploads 5,000 photos (their old versions must leave every table)
    from pyiceberg.expressions.visitors import bind
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField, StringType

    schema = Schema(NestedField(1, "image_key", StringType()), NestedField(2, "etag", StringType()))
    condition = erasure_filter(["raw/A/gone.jpg"], {f"raw/A/{i}.jpg": "new" for i in range(5000)})
    # WHEN pyiceberg binds it, as a scan or a delete does  THEN no RecursionError
    bind(schema, condition, case_sensitive=True)

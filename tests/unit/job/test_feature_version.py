"""A store holds one feature version (fp32, bf16 or one int8 calibration): the features commit
checks and records it, and only a full recompute switches it (emr_job.commits)."""
from __future__ import annotations

import pandas as pd
import pytest

from contract import layout
from contract.manifest import ManifestItem, build_manifest
from emr_job import arrow_files, key_reads, store
from emr_job.commits import FeatureVersionMismatch, commit_extraction, stored_feature_version

INT8 = layout.feature_version("int8", "0123456789ab")


def feature_files(catalog, warehouse: str, keys: list[str], batch_id: str, ingested_at: str) -> list[str]:
    frame = pd.DataFrame({"image_key": keys, "label": "A", "etag": "1", "batch_id": batch_id,
                          "ingested_at": ingested_at, "features": [[0.5] * 4 for _ in keys]})
    return arrow_files.write_rows(frame, arrow_files.FEATURE_COLUMNS, catalog, warehouse, layout.FEATURES_TABLE,
                                  batch_id)


def commit(catalog, warehouse, mode: str, keys: list[str], version: str, at: str, transient=()) -> None:
    items = [] if mode == "full" else [ManifestItem(key, "1", 10) for key in keys]  # full lists the source
    manifest = build_manifest(mode, "file:///photos", items)
    commit_extraction(catalog, manifest, feature_files(catalog, warehouse, keys, manifest.batch_id, at), [], {},
                      list(transient), at, version)


def features_table(catalog):
    return store.load_table(catalog, layout.FEATURES_TABLE)


def stored_keys(catalog) -> list[str]:
    return sorted(key_reads.current_versions(catalog, ["raw/A/a.jpg", "raw/A/b.jpg", "raw/A/c.jpg"])["image_key"])


def test_the_first_commit_records_its_feature_version_and_a_batch_of_another_is_refused(tmp_path):
    # GIVEN a store whose first batch ran at fp32
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    commit(catalog, warehouse, "incremental", ["raw/A/a.jpg"], layout.FEATURE_VERSION, "2026-01-01")
    assert stored_feature_version(features_table(catalog)) == layout.FEATURE_VERSION
    # WHEN an incremental batch at int8 commits
    with pytest.raises(FeatureVersionMismatch, match=f"holds features of version {layout.FEATURE_VERSION}; "
                                                     f"this batch would add {INT8}.*full recompute"):
        commit(catalog, warehouse, "incremental", ["raw/A/b.jpg"], INT8, "2026-01-02")
    # THEN nothing of it is stored, and the store keeps its version
    assert stored_keys(catalog) == ["raw/A/a.jpg"]
    assert stored_feature_version(features_table(catalog)) == layout.FEATURE_VERSION


def test_a_full_recompute_at_another_version_switches_the_store_and_keeps_no_row_of_the_old_one(tmp_path):
    # GIVEN an fp32 row a, whose re-fetch will fail transiently
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    commit(catalog, warehouse, "incremental", ["raw/A/a.jpg"], layout.FEATURE_VERSION, "2026-01-01")
    # WHEN a full recompute that began on 01-02 commits b at int8
    commit(catalog, warehouse, "full", ["raw/A/b.jpg"], INT8, "2026-01-02", transient=["raw/A/a.jpg"])
    # THEN the store is int8 and holds b only: a kept fp32 row would share the int8 PCA
    assert stored_feature_version(features_table(catalog)) == INT8
    assert stored_keys(catalog) == ["raw/A/b.jpg"]


def test_a_switching_full_recompute_refuses_to_drop_rows_committed_after_its_listing(tmp_path):
    # GIVEN an fp32 row c committed on 01-03, after a switching full recompute began on 01-02
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    commit(catalog, warehouse, "incremental", ["raw/A/a.jpg"], layout.FEATURE_VERSION, "2026-01-01")
    commit(catalog, warehouse, "incremental", ["raw/A/c.jpg"], layout.FEATURE_VERSION, "2026-01-03")
    # WHEN it commits THEN it is refused (c's photo would be left with neither row nor reason)
    with pytest.raises(FeatureVersionMismatch, match="committed while this full recompute switched.*again"):
        commit(catalog, warehouse, "full", ["raw/A/b.jpg"], INT8, "2026-01-02")
    assert stored_keys(catalog) == ["raw/A/a.jpg", "raw/A/c.jpg"]
    # AND run again (a later start, whose listing holds c), it switches the store
    commit(catalog, warehouse, "full", ["raw/A/a.jpg", "raw/A/b.jpg", "raw/A/c.jpg"], INT8, "2026-01-04")
    assert stored_feature_version(features_table(catalog)) == INT8
    assert stored_keys(catalog) == ["raw/A/a.jpg", "raw/A/b.jpg", "raw/A/c.jpg"]


def test_a_full_recompute_at_the_same_version_keeps_transient_failures_and_younger_rows(tmp_path):
    # GIVEN the same store, recomputed at its own version
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    commit(catalog, warehouse, "incremental", ["raw/A/a.jpg"], layout.FEATURE_VERSION, "2026-01-01")
    commit(catalog, warehouse, "incremental", ["raw/A/c.jpg"], layout.FEATURE_VERSION, "2026-01-03")
    commit(catalog, warehouse, "full", ["raw/A/b.jpg"], layout.FEATURE_VERSION, "2026-01-02", transient=["raw/A/a.jpg"])
    # THEN a keeps its row (its fetch failed) and c stays (younger than the listing)
    assert stored_keys(catalog) == ["raw/A/a.jpg", "raw/A/b.jpg", "raw/A/c.jpg"]


def test_a_store_made_before_versions_were_recorded_holds_fp32(tmp_path):
    # GIVEN features committed with no version property (as every store before this one)
    warehouse = str(tmp_path / "wh")
    catalog = store.open_catalog(warehouse)
    manifest = build_manifest("incremental", "file:///photos", [ManifestItem("raw/A/a.jpg", "1", 10)])
    store.commit_files(catalog, layout.FEATURES_TABLE,
                       feature_files(catalog, warehouse, ["raw/A/a.jpg"], manifest.batch_id, "2026-01-01"),
                       manifest.batch_id)
    # THEN it reads as the contract's fp32, and an int8 batch is refused
    assert stored_feature_version(features_table(catalog)) == layout.FEATURE_VERSION
    with pytest.raises(FeatureVersionMismatch):
        commit(catalog, warehouse, "incremental", ["raw/A/b.jpg"], INT8, "2026-01-02")

"""The feature job on real images with the genuine weights: rows, equality to Keras, idempotency,
atomic commits, quarantine."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from contract.manifest import build_manifest
from emr_job import store
from emr_job.job import JobSettings, run_manifest
from emr_job.store import report_uri
from emr_job.readers import export
from tests.integration.conftest import LABELS, fruit_manifest, run_verger_killed_at_commit


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    return str(tmp_path_factory.mktemp("warehouse"))


@pytest.fixture(scope="module")
def first_batch(spark, fruits, weights, warehouse):
    manifest = fruit_manifest(fruits)  # 12 labels × 30 = 360 images
    return manifest, run_manifest(spark, manifest, JobSettings(warehouse, weights))


def exported(spark, warehouse, tmp_path) -> pd.DataFrame:
    out = tmp_path / "export.parquet"
    export(spark, warehouse, str(out))
    return pq.read_table(out).to_pandas()


def keras_features(weights: str, paths: list) -> np.ndarray:
    import keras

    model = keras.applications.MobileNetV2(include_top=False, weights=weights, pooling="avg",
                                           input_shape=(224, 224, 3))
    images = np.stack([
        np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32) / 127.5 - 1
        for path in paths
    ])  # (n, 224, 224, 3)
    return model.predict(images, batch_size=32, verbose=0)  # (n, 1280)


def test_every_image_gets_one_row_with_its_label_and_1280_finite_floats(spark, first_batch, warehouse, tmp_path):
    manifest, report = first_batch
    rows = exported(spark, warehouse, tmp_path)
    assert report["images"] == {"in_manifest": 360, "already_present": 0, "already_quarantined": 0, "new": 360, "quarantined": 0,
                                "quarantined_by_reason": {}}
    assert len(rows) == 360 and rows["image_key"].is_unique
    assert sorted(rows["label"].unique()) == sorted(LABELS)
    assert (rows["label"] == rows["image_key"].str.split("/").str[0]).all()
    vectors = np.stack(rows["features"].to_numpy())
    assert vectors.shape == (360, 1280) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert set(rows["batch_id"]) == {manifest.batch_id}
    assert {"pca", "pca_version"} <= set(rows.columns)


def test_stored_features_equal_a_plain_keras_predict(spark, first_batch, fruits, weights, warehouse, tmp_path):
    rows = exported(spark, warehouse, tmp_path).iloc[::6]  # 60 images over every label
    expected = keras_features(weights, [fruits / key for key in rows["image_key"]])
    stored = np.stack(rows["features"].to_numpy())
    assert np.abs(stored - expected).max() <= 1e-3


def test_the_same_manifest_run_three_times_stores_no_duplicates(spark, first_batch, weights, warehouse, tmp_path):
    manifest, _ = first_batch
    for _ in range(2):
        report = run_manifest(spark, manifest, JobSettings(warehouse, weights))
        assert report["images"]["already_present"] == 360 and report["images"]["new"] == 0
    table = store.load_table(store.open_catalog(warehouse), "features")
    keys = store.read_columns(table, ["image_key", "etag"]).to_pandas()
    assert len(keys) == 360 and not keys.duplicated().any()


def test_an_overlapping_manifest_extracts_only_the_images_not_yet_stored(spark, first_batch, fruits, weights, warehouse):
    overlapping = fruit_manifest(fruits, LABELS[:2], start=20, count=15)  # 10 stored + 5 new per label
    report = run_manifest(spark, overlapping, JobSettings(warehouse, weights))
    assert report["images"]["already_present"] == 20 and report["images"]["new"] == 10
    table = store.load_table(store.open_catalog(warehouse), "features")
    keys = store.read_columns(table, ["image_key", "etag"]).to_pandas()
    assert len(keys) == 370 and not keys.duplicated().any()


def test_a_reuploaded_image_with_a_new_etag_supersedes_the_old_row(spark, fruits, weights, tmp_path, executed_in):
    # GIVEN a folder of 4 images, stored once
    folder = tmp_path / "images" / "Kiwi"
    folder.mkdir(parents=True)
    for name in sorted(os.listdir(fruits / "Kiwi"))[:4]:
        shutil.copy(fruits / "Kiwi" / name, folder / name)
    warehouse = str(tmp_path / "warehouse")
    from emr_job.folders import manifest_for_folder

    run_manifest(spark, manifest_for_folder(str(tmp_path / "images")), JobSettings(warehouse, weights))
    before = exported(spark, warehouse, tmp_path).set_index("image_key")
    # WHEN one image is replaced by a mirrored copy and the folder runs again
    changed = sorted(folder.iterdir())[0]
    Image.open(changed).transpose(Image.FLIP_LEFT_RIGHT).save(changed, "JPEG", quality=90)
    report = run_manifest(spark, manifest_for_folder(str(tmp_path / "images")), JobSettings(warehouse, weights))
    # THEN only that image was re-extracted, and readers see its new row only
    assert report["images"]["new"] == 1 and report["images"]["already_present"] == 3
    after = exported(spark, warehouse, tmp_path).set_index("image_key")
    key = f"Kiwi/{changed.name}"
    assert len(after) == 4 and after.loc[key, "etag"] != before.loc[key, "etag"]
    assert not np.allclose(after.loc[key, "features"], before.loc[key, "features"])


def write_bad_inputs(folder) -> dict[str, str]:
    """Files the job must quarantine, with the reason each must get."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.new("RGB", (100, 100), (200, 30, 30)).save(good, "JPEG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is a shopping list, not a photo")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[:300])
    Image.new("1", (10_001, 10_001)).save(folder / "bomb.png")
    # hostile input: a GIF named .jpg, 34 MP of RGBA (over the memory budget), a symbolic link to a
    # photo outside the source folder (and, added to the manifest by the test, a key climbing to it)
    Image.new("RGB", (50, 50), (1, 2, 3)).save(folder / "gif.jpg", "GIF")
    Image.new("RGBA", (5800, 5800), (0, 200, 0, 128)).save(folder / "huge-rgba.png", compress_level=1)
    good_elsewhere = folder.parent.parent / "elsewhere.jpg"
    good_elsewhere.write_bytes(good.getvalue())
    (folder / "escape.jpg").symlink_to(good_elsewhere)
    return {"empty.jpg": "empty", "text.jpg": "not_an_image", "truncated.jpg": "truncated",
            "bomb.png": "too_many_pixels", "vanished.jpg": "missing", "gif.jpg": "unsupported_format",
            "huge-rgba.png": "over_memory_budget", "escape.jpg": "outside_source", "elsewhere.jpg": "unsafe_key"}


def write_convertible_inputs(folder) -> list[str]:
    """Odd but valid images the job must convert and store."""
    Image.new("L", (90, 90), 128).save(folder / "gray.jpg")
    Image.new("CMYK", (90, 90), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (90, 90), (0, 200, 0, 128)).save(folder / "rgba.png")
    Image.new("P", (90, 90), 5).save(folder / "palette.png")
    Image.new("I;16", (90, 90), 30000).save(folder / "sixteen.png")
    return ["gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "sixteen.png"]


def test_bad_inputs_are_quarantined_with_their_reason_and_good_images_are_stored(spark, fruits, weights, tmp_path,
                                                                                  executed_in):
    # GIVEN a folder mixing real photos, convertible oddities and broken files
    folder = tmp_path / "images" / "Mixed"
    expected = write_bad_inputs(folder)
    convertible = write_convertible_inputs(folder)
    for name in sorted(os.listdir(fruits / "Lemon"))[:3]:
        shutil.copy(fruits / "Lemon" / name, folder / name)
    from emr_job.folders import manifest_for_folder

    manifest = manifest_for_folder(str(tmp_path / "images"))
    items = list(manifest.items) + [type(manifest.items[0])("Mixed/vanished.jpg", "0" * 32),
                                    type(manifest.items[0])("../elsewhere.jpg", "1" * 32)]
    manifest = build_manifest("incremental", manifest.source, items)
    warehouse = str(tmp_path / "warehouse")
    # WHEN the batch runs
    report = run_manifest(spark, manifest, JobSettings(warehouse, weights))
    # THEN each bad file has its reason, and the rest are stored
    quarantine = store.read_columns(
        store.load_table(store.open_catalog(warehouse), "quarantine"), ["image_key", "reason", "detail", "batch_id"]
    ).to_pandas()
    assert dict(zip(quarantine["image_key"].str.split("/").str[1], quarantine["reason"])) == expected
    assert (quarantine["detail"].str.len() > 0).all() and set(quarantine["batch_id"]) == {manifest.batch_id}
    stored = exported(spark, warehouse, tmp_path)
    assert len(stored) == 3 + len(convertible)
    assert report["images"]["quarantined_by_reason"] == {reason: 1 for reason in expected.values()}
    assert report["executed_in"] == executed_in
    # AND a replay of the batch neither re-fetches nor re-quarantines them
    replay = run_manifest(spark, manifest, JobSettings(warehouse, weights))
    assert replay["images"]["already_quarantined"] == len(expected) and replay["images"]["new"] == 0
    table = store.load_table(store.open_catalog(warehouse), "quarantine")
    assert len(store.read_columns(table, ["image_key"])) == len(expected)


def test_a_first_batch_of_one_image_is_stored_and_the_pca_waits_for_a_second(spark, fruits, weights, tmp_path):
    warehouse = str(tmp_path / "warehouse")
    first = run_manifest(spark, fruit_manifest(fruits, LABELS[:1], count=1), JobSettings(warehouse, weights))
    assert first["images"]["new"] == 1 and first["pca"]["action"] == "none"
    second = run_manifest(spark, fruit_manifest(fruits, LABELS[:1], start=1, count=2), JobSettings(warehouse, weights))
    assert second["pca"]["action"] == "refit" and second["pca"]["rows_fitted"] == 3


def test_an_empty_batch_is_a_no_op_with_a_report(spark, weights, tmp_path):
    warehouse = str(tmp_path / "warehouse")
    manifest = build_manifest("incremental", f"file://{tmp_path}", [])
    report = run_manifest(spark, manifest, JobSettings(warehouse, weights))
    assert report["status"] == "complete" and report["images"]["new"] == 0
    assert json.loads(open(report_uri(warehouse, manifest.batch_id)).read())["batch_id"] == manifest.batch_id


def test_a_job_killed_during_its_commit_shows_nothing_and_the_rerun_completes(fruits, weights, tmp_path, spark):
    # GIVEN a run of 24 images killed as its first commit begins
    images = tmp_path / "images"
    for label in LABELS[:3]:
        (images / label).mkdir(parents=True)
        for name in sorted(os.listdir(fruits / label))[:8]:
            shutil.copy(fruits / label / name, images / label / name)
    warehouse = str(tmp_path / "warehouse")
    args = ["run", "--images", str(images), "--warehouse", warehouse, "--weights", weights]
    killed = run_verger_killed_at_commit(args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # THEN Parquet files were written, but no reader sees a row of the batch
    assert list((tmp_path / "warehouse" / "features" / "data").rglob("*.parquet"))
    assert store.data_files(store.load_table(store.open_catalog(warehouse), "features")) == []
    # WHEN the same command runs again THEN every row is there exactly once
    from verger.cli import main

    assert main(args) == 0
    rows = exported(spark, warehouse, tmp_path)
    assert len(rows) == 24 and rows["image_key"].is_unique

"""The int8 path on real photos with the genuine weights: `verger quantize`, features that stay
close to fp32's on photos outside the calibration, and a store that holds one feature version
down both paths of the job."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from contract import layout
from emr_job import key_reads, store
from emr_job.commits import FeatureVersionMismatch, stored_feature_version
from emr_job.engines import load_extractor
from emr_job.folders import manifest_for_folder
from emr_job.images import preprocess
from emr_job.job import JobSettings, run_manifest
from tests.integration.conftest import LABELS
from verger.quantize import quantize

pytestmark = pytest.mark.integration


def copy_photos(fruits: Path, root: Path, labels, count: int, series: str) -> list[str]:
    """`count` photos per label of one series ("" the plain one, "r_" the rotated one), copied
    (a symlink out of the folder would be refused); returns their keys."""
    keys = []
    for label in labels:
        names = sorted(name for name in os.listdir(fruits / label)
                       if name.startswith("r_") == (series == "r_") and not name.startswith("r2_"))
        for name in names[:: max(1, len(names) // count)][:count]:
            (root / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fruits / label / name, root / label / name)
            keys.append(f"{label}/{name}")
    return keys


@pytest.fixture(scope="module")
def int8_model(fruits, weights, tmp_path_factory):
    calibration = tmp_path_factory.mktemp("calibration")
    copy_photos(fruits, calibration, LABELS, 5, "")
    return quantize(str(calibration), weights, str(tmp_path_factory.mktemp("int8")), photos=60)


def test_int8_features_of_photos_outside_the_calibration_stay_close_to_fp32(fruits, weights, int8_model, tmp_path):
    # GIVEN a model calibrated on 60 plain-series photos, and 48 r_-series photos it never saw
    keys = copy_photos(fruits, tmp_path, LABELS, 4, "r_")
    photos = np.stack([preprocess((tmp_path / key).read_bytes()) for key in keys])  # (48, 224, 224, 3)
    # WHEN they are extracted at fp32 and at int8
    fp32 = load_extractor(weights, "openvino", threads=2)(photos)
    int8 = load_extractor(weights, "openvino", threads=2, precision="int8", int8_model=int8_model.folder)(photos)
    # THEN int8 really ran, yet each photo stays close and its nearest other photo keeps its label
    cosine = (fp32 * int8).sum(axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    assert not np.array_equal(fp32, int8)
    assert cosine.mean() >= 0.96 and cosine.min() >= 0.9, (cosine.mean(), cosine.min())  # measured 0.978, 0.943
    labels = np.array([key.split("/")[0] for key in keys])
    assert np.mean(nearest_label(fp32, labels) == nearest_label(int8, labels)) >= 0.9


def nearest_label(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return labels[similarity.argmax(axis=1)]


def test_an_int8_store_refuses_fp32_batches_until_a_full_recompute_switches_it(
        spark, fruits, weights, int8_model, tmp_path, executed_in):
    # GIVEN a store whose first batch ran at int8 (in the driver, or with the model shipped to the executors)
    images, warehouse = tmp_path / "images", str(tmp_path / "wh")
    copy_photos(fruits, images, LABELS[:3], 6, "")
    int8 = JobSettings(warehouse, weights, precision="int8", int8_model=int8_model.folder)
    first = run_manifest(spark, manifest_for_folder(str(images)), int8)
    assert first["executed_in"] == executed_in and first["images"]["new"] == 18
    assert first["engine"]["feature_version"] == first["pca"]["feature_version"] == layout.feature_version(
        "int8", int8_model.model_id)
    # WHEN new photos come at fp32
    new_keys = copy_photos(fruits, images, LABELS[3:4], 3, "")
    with pytest.raises(FeatureVersionMismatch, match="full recompute"):
        run_manifest(spark, manifest_for_folder(str(images)), JobSettings(warehouse, weights))
    # THEN none of them is stored; the int8 model's own batch takes them
    catalog = store.open_catalog(warehouse)
    assert key_reads.current_versions(catalog, new_keys).empty
    assert run_manifest(spark, manifest_for_folder(str(images)), int8)["images"]["new"] == 3
    # AND a full recompute at fp32 switches the whole store, with a PCA of fp32 features
    full = run_manifest(spark, manifest_for_folder(str(images), "full"), JobSettings(warehouse, weights))
    assert full["images"]["new"] == 21 and full["pca"]["feature_version"] == layout.FEATURE_VERSION
    assert stored_feature_version(store.load_table(catalog, layout.FEATURES_TABLE)) == layout.FEATURE_VERSION
    assert len(key_reads.current_versions(catalog, sorted(str(p.relative_to(images)) for p in images.rglob("*.jpg")))) == 21
    assert run_manifest(spark, manifest_for_folder(str(images)), JobSettings(warehouse, weights))["images"]["new"] == 0


def test_a_switch_killed_before_its_refit_is_finished_by_the_next_batch_not_projected_with_the_old_pca(
        spark, fruits, weights, int8_model, tmp_path, monkeypatch):
    # GIVEN an int8 store, switched to fp32 by a full recompute killed after its features commit
    images, warehouse = tmp_path / "images", str(tmp_path / "wh")
    copy_photos(fruits, images, LABELS[:3], 4, "")
    run_manifest(spark, manifest_for_folder(str(images)),
                 JobSettings(warehouse, weights, precision="int8", int8_model=int8_model.folder))
    with monkeypatch.context() as patch:
        patch.setattr("emr_job.projections.refit", lambda *_: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            run_manifest(spark, manifest_for_folder(str(images), "full"), JobSettings(warehouse, weights))
    # WHEN the next fp32 batch comes
    copy_photos(fruits, images, LABELS[3:4], 2, "")
    report = run_manifest(spark, manifest_for_folder(str(images)), JobSettings(warehouse, weights))
    # THEN it refits on the fp32 features rather than projecting them with the int8 PCA
    assert report["images"]["new"] == 2
    assert report["pca"]["action"] == "refit" and report["pca"]["feature_version"] == layout.FEATURE_VERSION

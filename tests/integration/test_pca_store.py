"""The stored PCA on features of real images: equal to scikit-learn, re-applied incrementally,
switched atomically, and telling when it no longer fits."""
from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw
from sklearn.decomposition import PCA

from emr_job import classifier, pca, store
from emr_job.folders import manifest_for_folder
from emr_job.job import JobSettings, run_manifest
from emr_job.projections import refit
from emr_job.readers import current_pca_version, export
from tests.integration.conftest import fruit_manifest, run_verger_killed_at_commit


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, spark, fruits, weights):
    """12 labels × 60 images (every fifth frame held back), the PCA fitted by the first batch at 0.95."""
    path = str(tmp_path_factory.mktemp("pca-warehouse"))
    report = run_manifest(spark, fruit_manifest(fruits, count=60, skip_every=5), JobSettings(path, weights))
    assert report["pca"]["action"] == "refit"
    return path


def exported(spark, warehouse, tmp_path) -> pd.DataFrame:
    out = tmp_path / "export.parquet"
    export(spark, warehouse, str(out))
    return pq.read_table(out).to_pandas()


@pytest.mark.parametrize("computed_in", ["driver", "executors"])
@pytest.mark.parametrize("target", [0.80, 0.90, 0.95])
def test_projections_equal_sklearn_full_svd_per_component_up_to_sign(spark, warehouse, target, computed_in,
                                                                      monkeypatch, tmp_path):
    # GIVEN a refit at the target over the stored features, on the driver (a small store) or in
    # Spark (forced by a zero driver limit)
    if computed_in == "executors":
        monkeypatch.setattr(classifier, "DRIVER_FIT_BYTES", 0)
    outcome = refit(spark, store.open_catalog(warehouse), JobSettings(warehouse, "", variance=target))
    assert outcome["computed_in"] == computed_in
    rows = exported(spark, warehouse, tmp_path)
    features = np.stack(rows["features"].to_numpy()).astype(np.float64)  # (720, 1280)
    ours = np.stack(rows["pca"].to_numpy())  # (720, k)
    # WHEN scikit-learn fits the same matrix with the exact solver
    reference = PCA(n_components=target, svd_solver="full").fit(features)
    theirs = reference.transform(features)
    # THEN same k, and every component equal up to sign
    assert outcome["k"] == reference.n_components_ == ours.shape[1]
    assert set(rows["pca_version"]) == {outcome["version"]}
    signs = np.sign((ours * theirs).sum(axis=0))
    relative = np.linalg.norm(ours - theirs * signs, axis=0) / np.linalg.norm(theirs, axis=0)
    assert relative.max() <= 1e-3


def test_incremental_rows_are_projected_with_the_stored_model_without_refit(spark, warehouse, fruits, weights, tmp_path,
                                                                            executed_in):
    version = current_pca_version(store.open_catalog(warehouse))
    # WHEN a batch of held-back frames of the same classes arrives (every fifth frame, never stored;
    # each path gets its own, as the store is shared)
    start = 0 if executed_in == "driver" else 40
    report = run_manifest(spark, fruit_manifest(fruits, start=start, step=5, count=8), JobSettings(warehouse, weights))
    # THEN it was projected with the current model, not refitted, and fits it
    assert report["pca"]["action"] == "applied" and report["pca"]["version"] == version
    assert report["pca"]["rows_projected"] == 96 and report["executed_in"] == executed_in
    assert report["pca"]["drift"]["refit_advised"] is False, report["pca"]["drift"]
    rows = exported(spark, warehouse, tmp_path)
    new = rows[rows["batch_id"] == report["batch_id"]]
    model = pca.load(warehouse, version)
    np.testing.assert_allclose(
        np.stack(new["pca"].to_numpy()), model.project(np.stack(new["features"].to_numpy())), rtol=1e-5, atol=1e-5
    )


def unlike_images(folder) -> None:
    """Noise, flat colours and line drawings: nothing like a centred fruit on white."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(folder / f"noise{index}.png")
        Image.new("RGB", (100, 100), tuple(int(v) for v in rng.integers(0, 256, 3))).save(folder / f"flat{index}.png")
        drawing = Image.new("RGB", (100, 100), "white")
        pen = ImageDraw.Draw(drawing)
        for _ in range(12):
            pen.line(tuple(int(v) for v in rng.integers(0, 100, 4)), fill=(0, 0, 0), width=3)
        drawing.save(folder / f"drawing{index}.png")


def test_a_batch_unlike_the_store_advises_a_refit(spark, warehouse, weights, tmp_path):
    unlike_images(tmp_path / "images" / "Unknown")
    report = run_manifest(spark, manifest_for_folder(str(tmp_path / "images")), JobSettings(warehouse, weights))
    drift = report["pca"]["drift"]
    assert drift["refit_advised"] is True, drift
    assert drift["captured_variance_share"] < drift["threshold"]


def test_a_refit_killed_before_the_pointer_switch_leaves_the_old_version_current(spark, warehouse, tmp_path):
    # GIVEN the store's current version and its model files
    before = current_pca_version(store.open_catalog(warehouse))
    models_before = set(store_models(warehouse))
    # WHEN a refit is killed as its commit begins
    killed = run_verger_killed_at_commit(["refit", "--warehouse", warehouse, "--variance", "0.8"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # THEN the new model's files were written, yet the old version is current and readable
    assert len(set(store_models(warehouse)) - models_before) == 1
    assert current_pca_version(store.open_catalog(warehouse)) == before
    rows = exported(spark, warehouse, tmp_path)
    assert set(rows["pca_version"]) == {before}


def store_models(warehouse: str) -> list[str]:
    from pathlib import Path

    return [path.name for path in (Path(warehouse) / "pca").iterdir()]

"""Label suggestions on real photos: inbox uploads after a labelled batch, the `verger suggest`
command, and the held-out evaluation, on the session's local Spark."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

from contract import layout
from contract.manifest import ManifestItem, build_manifest
from emr_job import classifier, logistic, pca, store
from emr_job.folders import file_md5
from emr_job.job import JobSettings, run_manifest
from emr_job.readers import current_pca_version
from emr_job.suggest import TOP_LABELS, current_classifier
from tests.integration.conftest import LABELS, fruit_manifest
from verger.cli import main
from verger.suggest_evaluation import SHIPPED

pytestmark = pytest.mark.integration

INBOX_PER_LABEL = 3


def inbox_folder(fruits, root):
    """Held-back frames (positions 0, 5, 10 of each label) as unlabelled inbox uploads; the true
    label is kept in the file name only for the test to check against."""
    (root / "inbox").mkdir(parents=True)
    truth = {}
    for label in LABELS:
        for name in sorted(os.listdir(fruits / label))[0:5 * INBOX_PER_LABEL:5]:
            key = f"inbox/{label.replace(' ', '_')}--{name}"
            shutil.copyfile(fruits / label / name, root / key)  # a symlink out of the folder is refused
            truth[key] = label
    return truth


@pytest.fixture(scope="module")
def suggested(tmp_path_factory, spark, fruits, weights):
    """12 labels × 30 labelled frames (every fifth held back), then 36 held-back frames in the inbox."""
    warehouse = str(tmp_path_factory.mktemp("suggest-warehouse"))
    source = tmp_path_factory.mktemp("uploads")
    truth = inbox_folder(fruits, source)
    settings = JobSettings(warehouse, weights)
    run_manifest(spark, fruit_manifest(fruits, count=30, skip_every=5), settings)
    items = [ManifestItem(key, file_md5(str(source / key))) for key in truth]
    # WHEN a batch of inbox photos runs through the job (its suggestion hook included)
    inbox = build_manifest("incremental", f"file://{source}", items)
    outcome = run_manifest(spark, inbox, settings)["suggestions"]
    catalog = store.open_catalog(warehouse)
    table = store.read_columns(store.load_table(catalog, layout.SUGGESTIONS_TABLE),
                               ["image_key", "batch_id", "labels", "scores", "uncertain", "neighbour_labels"])
    rows = table.filter(pc.equal(table["batch_id"], inbox.batch_id)).to_pylist()
    return warehouse, source, truth, outcome, rows


def test_every_inbox_photo_gets_five_ranked_labels_in_one_committed_table(suggested):
    _, _, truth, outcome, rows = suggested
    # THEN one row per inbox photo, five labels each, scores best first
    assert outcome["action"] == "suggested" and outcome["photos"] == len(truth) == 36
    assert sorted(row["image_key"] for row in rows) == sorted(truth)
    for row in rows:
        assert len(row["labels"]) == TOP_LABELS == len(set(row["labels"]))
        assert row["scores"] == sorted(row["scores"], reverse=True)
    assert outcome["uncertain"] == sum(row["uncertain"] for row in rows)


def test_held_back_frames_are_recognised_from_the_labelled_store(suggested):
    _, _, truth, _, rows = suggested
    # THEN almost every held-back frame gets its own label first, and always within the top five
    right = sum(row["labels"][0] == truth[row["image_key"]] for row in rows)
    assert right >= 0.9 * len(rows)
    assert all(truth[row["image_key"]] in row["labels"] for row in rows)
    # AND the images shown beside the labels are labelled photos of the store, never inbox photos
    assert all(label in LABELS for row in rows for label in row["neighbour_labels"])


def test_each_photo_has_a_json_file_for_the_app_below_the_local_warehouse(suggested):
    warehouse, _, truth, _, rows = suggested
    key = sorted(truth)[0]
    body = json.loads(open(os.path.join(warehouse, layout.SUGGESTION_PREFIX, f"{key}.json")).read())
    (row,) = [row for row in rows if row["image_key"] == key]
    # THEN the file says what the table says, with five nearest labelled images
    assert [item["label"] for item in body["suggestions"]] == row["labels"]
    assert body["uncertain"] == row["uncertain"] and len(body["neighbours"]) == 5
    assert len(os.listdir(os.path.join(warehouse, layout.SUGGESTION_PREFIX, "inbox"))) == len(truth)


def test_suggest_command_prints_one_json_line_per_photo_and_names_a_broken_one(suggested, capsys, tmp_path, weights):
    warehouse, source, truth, _, _ = suggested
    key = sorted(truth)[-1]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    # WHEN a real photo and a broken file are suggested for
    code = main(["suggest", "--warehouse", warehouse, "--weights", weights, "--json", str(source / key), str(broken)])
    good, bad = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # THEN the photo gets five labels best first, its own first; the broken file its reason; exit 1
    assert code == 1
    assert good["image"] == str(source / key) and good["suggestions"][0]["label"] == truth[key]
    scores = [item["score"] for item in good["suggestions"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and isinstance(good["uncertain"], bool)
    assert bad == {"image": str(broken), "error": "not_an_image", "detail": bad["detail"]}


def test_suggest_command_does_a_whole_folder(suggested, capsys, weights):
    warehouse, source, truth, _, _ = suggested
    # WHEN the inbox folder is given
    code = main(["suggest", "--warehouse", warehouse, "--weights", weights, "--images", str(source / "inbox"), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # THEN every photo has a line, and most name the photo's true label first
    assert code == 0 and len(lines) == len(truth)
    right = sum(line["suggestions"][0]["label"] == truth[f"inbox/{os.path.basename(line['image'])}"] for line in lines)
    assert right >= 0.9 * len(lines)


def test_evaluation_reports_every_method_on_every_split_in_one_table(suggested, capsys):
    warehouse, _, _, _, _ = suggested
    # WHEN the labelled store (12 labels × 30 plain-series frames) is evaluated on the splits its
    # file names allow (no r_ series here), for three methods
    code = main(["evaluate-suggestions", "--warehouse", warehouse, "--split", "block", "--split", "gap",
                 "--method", SHIPPED, "--method", "nearest-per-class/pca (previous)", "--method", "centroids/l2",
                 "--json"])
    outcome = json.loads(capsys.readouterr().out)
    # THEN one row per (split, method); 6 of 30 frames per label tested on block, 6 on gap; the inbox
    # photos (no label) take no part
    assert code == 0 and outcome["labels"] == 12 and outcome["photos"] == 12 * 30
    assert [(row["split"], row["test"]) for row in outcome["table"]] == [("block", 72)] * 3 + [("gap", 72)] * 3
    shipped = [row for row in outcome["table"] if row["method"] == SHIPPED]
    assert all(row["top5"] >= row["top1"] >= 0.8 and 0 <= row["ece"] <= 1 for row in shipped)
    # AND a higher uncertainty threshold never flags fewer photos
    flagged = [row["flagged_share"] for row in outcome["uncertain_thresholds"]["block"]]
    assert flagged == sorted(flagged)


def test_the_classifier_is_versioned_with_the_pca_and_replaced_with_it_by_a_refit(suggested):
    warehouse, _, _, _, _ = suggested
    catalog = store.open_catalog(warehouse)
    before = current_classifier(catalog, warehouse)
    # GIVEN the classifier fitted by the first batch: it names the current PCA and the rows it saw
    assert before.pca_version == current_pca_version(catalog)
    assert before.labels.tolist() == sorted(LABELS) and before.rows_per_label.tolist() == [30] * 12
    seen = pq.read_table(os.path.join(warehouse, layout.CLASSIFIER_DIR, before.version, "rows")).to_pandas()
    assert len(seen) == 12 * 30 and seen["label"].notna().all() and not seen["image_key"].str.startswith("inbox/").any()
    # WHEN the store is refitted
    assert main(["refit", "--warehouse", warehouse]) == 0
    catalog = store.open_catalog(warehouse)
    after = current_classifier(catalog, warehouse)
    # THEN both pointers moved together: a new classifier, fitted on the new PCA's version
    assert after.version != before.version and after.pca_version == current_pca_version(catalog) != before.pca_version
    # AND each label's exemplar is one of its own stored photos
    assert all(key.startswith(f"{label}/") for key, label in zip(after.exemplar_keys, after.labels))


def test_inbox_photos_before_any_labelled_photo_get_a_clear_none_not_a_failed_batch(suggested, spark, weights, tmp_path):
    _, source, truth, _, _ = suggested
    # GIVEN a warehouse whose only photos are four inbox uploads (the PCA is fitted on them)
    items = [ManifestItem(key, file_md5(str(source / key))) for key in sorted(truth)[:4]]
    # WHEN they run through the job
    report = run_manifest(spark, build_manifest("incremental", f"file://{source}", items), JobSettings(str(tmp_path), weights))
    catalog = store.open_catalog(str(tmp_path))
    outcome = report["suggestions"]
    # THEN the batch completes, its report says why there is nothing to suggest, and no table is written
    assert report["status"] == "complete"
    assert outcome["action"] == "none" and "too few labelled photos at the last refit" in outcome["reason"]
    assert report["pca"]["classifier"] == {"action": "none", "reason": "no labelled photos"}
    assert store.load_table(catalog, layout.SUGGESTIONS_TABLE) is None


@pytest.mark.parametrize("fitted_on", ["driver", "collected", "executors"])
def test_both_fits_reach_the_optimum_scikit_learn_finds_for_the_same_objective(suggested, spark, monkeypatch,
                                                                                fitted_on):
    warehouse, _, _, _, _ = suggested
    catalog = store.open_catalog(warehouse)
    # GIVEN the labelled rows of the store (12 labels × 30 photos, 1280-d)
    table = store.read_columns(store.load_table(catalog, layout.FEATURES_TABLE), ["label", "features"]).to_pandas()
    table = table[table["label"].notna()]
    features = np.stack(table["features"].to_numpy())
    names, index = np.unique(table["label"].to_numpy(), return_inverse=True)
    # WHEN the job's fit runs on rows already on the driver (a small store's refit), on rows
    # collected from Spark, or in the executors (forced by a zero driver limit)
    if fitted_on == "executors":
        monkeypatch.setattr(classifier, "DRIVER_FIT_BYTES", 0)
    projection = pca.load(warehouse, current_pca_version(catalog))
    keys = [str(number) for number in range(len(table))]
    if fitted_on == "driver":
        model = classifier.fit_rows(pd.DataFrame({"image_key": keys, "label": table["label"].to_numpy(),
                                                  "features": list(features)}), projection)
    else:
        rows = spark.createDataFrame([(key, label, vector.tolist()) for key, label, vector in
                                      zip(keys, table["label"], features)],
                                     "image_key string, label string, features array<float>")
        model = classifier.fit(rows, projection)
    assert classifier.fits_on_driver(len(table)) == (fitted_on != "executors")
    # AND scikit-learn's solver minimises the same objective (summed log-loss + ‖W‖²/2C), run tight
    reference = LogisticRegression(C=classifier.PENALTY_C, tol=1e-8, max_iter=5000).fit(
        classifier.unit_rows(features), index)
    # THEN both rank the labels alike and give close probabilities (different L-BFGS, same optimum)
    ours = model.probabilities(features)
    theirs = classifier.softmax(reference.decision_function(classifier.unit_rows(features)) / model.temperature)
    assert model.labels.tolist() == names.tolist()
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).mean() >= 0.99
    assert np.abs(ours - theirs).max() < 0.05
    assert model.converged and 0 < model.iterations < logistic.MAX_ITERATIONS


def test_a_store_with_one_label_gets_no_classifier_and_a_reason(spark, tmp_path):
    # GIVEN labelled rows of a single label
    rows = spark.createDataFrame([(f"Kiwi/{i}.jpg", "e", "Kiwi", [float(i), 1.0, 2.0]) for i in range(5)],
                                 "image_key string, etag string, label string, features array<float>")
    projection = pca.fit_from_moments(3, np.ones(3), np.eye(3), 0.9)
    # WHEN a refit fits the classifier  THEN the pointer is cleared and the report says why
    pointer, report = classifier.refit(rows, projection, str(tmp_path))
    assert pointer == {layout.CURRENT_CLASSIFIER_PROPERTY: ""}
    assert report == {"action": "none", "reason": "a classifier needs photos of at least two labels: only 'Kiwi' is labelled"}

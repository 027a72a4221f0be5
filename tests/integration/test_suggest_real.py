"""Label suggestions on real photos: inbox uploads after a labelled batch, the `verger suggest`
command, and the held-out evaluation, on the session's local Spark."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow.compute as pc
import pytest

from contract import layout
from contract.manifest import ManifestItem, build_manifest
from emr_job import store
from emr_job.folders import file_md5
from emr_job.job import JobSettings, run_manifest
from emr_job.suggest import TOP_LABELS
from tests.integration.conftest import LABELS, fruit_manifest
from verger.cli import main

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
    # AND the nearest images are labelled photos of the store, never other inbox photos
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


def test_evaluation_holds_out_the_last_fifth_of_each_series_and_reports_accuracy(suggested, capsys):
    warehouse, _, _, _, _ = suggested
    # WHEN the labelled store (30 plain-series frames per label) is evaluated on the block split
    code = main(["evaluate-suggestions", "--warehouse", warehouse, "--split", "block"])
    outcome = json.loads(capsys.readouterr().out)
    # THEN 6 of 30 frames per label are held out, the PCA is fitted on the other 24, and the
    # inbox photos (no label) take no part
    assert code == 0 and (outcome["train"], outcome["test"]) == (12 * 24, 12 * 6)
    assert outcome["top5"] >= outcome["top1"] >= 0.8
    # AND a higher uncertainty threshold never flags fewer photos
    flagged = [row["flagged_share"] for row in outcome["uncertain_thresholds"]]
    assert flagged == sorted(flagged)


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
    assert outcome == {"action": "none", "reason": "no labelled photos in this warehouse: nothing to suggest from"}
    assert store.load_table(catalog, layout.SUGGESTIONS_TABLE) is None

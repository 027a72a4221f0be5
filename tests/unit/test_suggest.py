"""Label suggestions without Spark: the per-partition scan, the ranking, the files the app reads,
the evaluation's arithmetic and the CLI's handling of bad photos."""
from __future__ import annotations

import json

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from contract.layout import UnsafeKey
from emr_job.images import Reason
from emr_job.suggest import (
    UNCERTAIN_BELOW, json_uri, keep_top, partition_best, rank_labels, unit_rows,
    write_json_files,
)
from verger.suggest_commands import accuracy, photo_paths, read_photo

LABELS = np.array(["Apple", "Kiwi", "Lemon"], object)


def frame(keys, labels, points) -> pd.DataFrame:
    return pd.DataFrame({"image_key": keys, "label": labels, "pca": [np.asarray(p, np.float32) for p in points]})


def table_row(image_key: str = "inbox/a.jpg") -> dict:
    return {
        "image_key": image_key, "etag": "e1", "batch_id": "incr-1", "pca_version": "pca-1",
        "method": "m", "labels": ["Kiwi", "Apple"], "scores": [0.9, 0.1], "uncertain": False,
        "neighbour_keys": ["raw/Kiwi/1.jpg"], "neighbour_labels": ["Kiwi"], "neighbour_similarities": [0.97],
    }


def test_unit_rows_scales_to_length_one_and_leaves_zero_rows_alone():
    # GIVEN a row of length 5 and a zero row
    rows = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    # THEN the first has length 1 in the same direction, the second stays zero (no NaN)
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


def test_keep_top_orders_best_first_and_moves_companions_with_their_similarity():
    similarity = np.array([[0.2, 0.9, 0.5, 0.7]])
    keys = np.array([["a", "b", "c", "d"]], object)
    labels = np.array([["A", "B", "C", "D"]], object)
    # WHEN keeping the best three
    best, best_keys, best_labels = keep_top(similarity, 3, keys, labels)
    # THEN they are in descending order with their own key and label
    assert best.tolist() == [[0.9, 0.7, 0.5]]
    assert best_keys.tolist() == [["b", "d", "c"]] and best_labels.tolist() == [["B", "D", "C"]]


def test_partition_best_takes_each_labels_closest_image_across_arrow_batches():
    # GIVEN one query along x, and a partition arriving as two batches
    query = unit_rows(np.array([[1.0, 0.0]]))
    batches = [
        frame(["A/1", "K/1"], ["Apple", "Kiwi"], [[1.0, 1.0], [0.0, 1.0]]),
        frame(["A/2", "L/1"], ["Apple", "Lemon"], [[1.0, 0.1], [-1.0, 0.0]]),
    ]
    # WHEN the partition is summarised
    (summary,) = partition_best(iter(batches), query, {"Apple": 0, "Kiwi": 1, "Lemon": 2}, 2)
    best = np.frombuffer(summary["best"][0], np.float32).reshape(1, 3)
    # THEN every label holds its best cosine, and the two nearest images come from both batches
    assert np.allclose(best, [[np.cos(np.arctan(0.1)), 0.0, -1.0]], atol=1e-6)
    assert summary["neighbour_keys"][0] == ["A/2", "A/1"]
    assert summary["neighbour_labels"][0] == ["Apple", "Apple"]


def test_rank_labels_puts_the_closest_label_first_with_scores_that_sum_to_one():
    # GIVEN similarities to the closest image of each label
    labels, scores = rank_labels(np.array([[0.80, 0.95, 0.60]]), LABELS, top=3)
    # THEN best first, scores descending, and the full ranking is a distribution
    assert labels.tolist() == [["Kiwi", "Apple", "Lemon"]]
    assert np.all(np.diff(scores[0]) < 0) and scores.sum() == pytest.approx(1.0)


def test_close_runners_up_make_a_weak_top_score_and_a_clear_winner_a_strong_one():
    # GIVEN one photo nearly as close to two labels, another close to only one
    _, scores = rank_labels(np.array([[0.90, 0.89, 0.88], [0.95, 0.60, 0.50]]), LABELS)
    # THEN the first falls under the uncertainty threshold and the second is well above it
    assert scores[0, 0] < UNCERTAIN_BELOW < scores[1, 0]
    assert scores[1, 0] > 0.99


def test_json_goes_to_the_bucket_for_s3_sources_and_below_the_warehouse_otherwise():
    assert json_uri("s3://photos", "s3://photos/warehouse", "inbox/x y.jpg") == "s3://photos/suggestions/inbox/x y.jpg.json"
    assert json_uri("file:///img", "file:///wh/", "inbox/x.jpg") == "/wh/suggestions/inbox/x.jpg.json"


def test_json_files_land_in_s3_under_suggestions_with_five_fields_the_app_reads(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="photos")
        # WHEN one suggestions row is written for an S3 source
        written = write_json_files([table_row()], "s3://photos", "s3://photos/warehouse")
        body = json.loads(s3.get_object(Bucket="photos", Key="suggestions/inbox/a.jpg.json")["Body"].read())
    # THEN the object holds the ranked labels, the flag and the neighbours
    assert written == 1
    assert body["suggestions"] == [{"label": "Kiwi", "score": 0.9}, {"label": "Apple", "score": 0.1}]
    assert body["uncertain"] is False
    assert body["neighbours"] == [{"image_key": "raw/Kiwi/1.jpg", "label": "Kiwi", "similarity": 0.97}]
    assert (body["image_key"], body["etag"], body["batch_id"]) == ("inbox/a.jpg", "e1", "incr-1")


def test_json_files_land_below_the_warehouse_for_a_local_source(tmp_path):
    # WHEN rows for a file:// source are written
    write_json_files([table_row("inbox/a.jpg"), table_row("inbox/sub/b.jpg")], "file:///img", str(tmp_path))
    # THEN one file per photo, nested like the key
    assert json.loads((tmp_path / "suggestions/inbox/sub/b.jpg.json").read_text())["image_key"] == "inbox/sub/b.jpg"
    assert (tmp_path / "suggestions/inbox/a.jpg.json").exists()


@pytest.mark.parametrize("source", ["file:///img", "s3://photos"])
def test_a_suggestion_for_a_key_that_climbs_out_is_never_written(tmp_path, source):
    # GIVEN a row whose key would put its JSON outside suggestions/ (the case the issue found:
    # inbox/../../../tmp/x.jpg wrote below /tmp)
    row = table_row(f"inbox/../../../{tmp_path.name}/x.jpg")
    # WHEN written  THEN the path check refuses it and nothing lands anywhere
    with pytest.raises(UnsafeKey, match="climbs out"):
        write_json_files([row], source, str(tmp_path / "warehouse"))
    assert list(tmp_path.rglob("*.json")) == []


def test_accuracy_counts_top1_top5_and_what_each_threshold_would_flag():
    # GIVEN three photos: right at rank 1 (sure), right at rank 2 (unsure), absent from the top 5 (unsure)
    labels = np.array([list("abcde"), list("xbcde"), list("vwxyz")], object)
    scores = np.array([[0.9] + [0.02] * 4, [0.45] + [0.1] * 4, [0.35] + [0.1] * 4])
    outcome = accuracy(labels, scores, np.array(["a", "b", "c"], object))
    # THEN one of three right at top 1, two of three within the top 5
    assert (outcome["top1"], outcome["top5"], outcome["wrong"]) == (0.3333, 0.6667, 2)
    at_half = next(row for row in outcome["uncertain_thresholds"] if row["threshold"] == 0.5)
    # THEN at 0.5 both wrong answers are flagged and the right one is kept
    assert at_half == {"threshold": 0.5, "flagged_share": 0.6667, "top1_when_confident": 1.0,
                       "wrong_flagged": 2, "right_flagged": 0}


def test_photo_paths_needs_at_least_one_photo_and_image_file_names(tmp_path):
    with pytest.raises(ValueError, match="no photos given"):
        photo_paths([], None)
    with pytest.raises(ValueError, match="not an image file name"):
        photo_paths(["notes.txt"], None)
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        photo_paths([], str(tmp_path / "absent"))


def test_photo_paths_lists_a_folder_recursively_after_the_named_photos(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.png", "sub/c.jpeg", "readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    # WHEN a named photo and the folder are given
    paths = photo_paths(["first.jpg"], str(tmp_path))
    # THEN the named photo first, then the folder's images in sorted order, text files left out
    assert paths == ["first.jpg", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), str(tmp_path / "sub/c.jpeg")]


def test_a_missing_or_unreadable_photo_is_rejected_with_its_reason(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    # THEN each gets a specific reason rather than an exception
    assert read_photo(str(tmp_path / "absent.jpg")).reason == Reason.MISSING
    assert read_photo(str(tmp_path / "bad.jpg")).reason == Reason.NOT_AN_IMAGE


"""Label suggestions without Spark: the ranking, the uncertain flag, the exemplars, the files the
app reads and the CLI's handling of bad photos."""
from __future__ import annotations

import json

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from contract.layout import UnsafeKey
from emr_job import pca
from emr_job.classifier import UNCERTAIN_BELOW, Classifier, build
from emr_job.images import Reason
from emr_job import suggest as suggest_module
from emr_job.suggest import json_uri, rank_labels, suggest, write_json_files
from verger.suggest_commands import photo_paths, read_photo

LABELS = np.array(["Apple", "Kiwi", "Lemon"], object)


def table_row(image_key: str = "inbox/a.jpg") -> dict:
    return {
        "image_key": image_key, "etag": "e1", "batch_id": "incr-1", "pca_version": "pca-1",
        "method": "m", "labels": ["Kiwi", "Apple"], "scores": [0.9, 0.1], "uncertain": False,
        "neighbour_keys": ["raw/Kiwi/1.jpg"], "neighbour_labels": ["Kiwi"], "neighbour_similarities": [0.97],
    }


def model() -> tuple[Classifier, pca.PcaModel]:
    """Three labels along the axes of a 3-d space: scores W·x/|x| with W = 6 × identity (the
    labels interchangeable), and an identity PCA; each label's exemplar is its own axis."""
    fitted = build(LABELS, np.array([10, 10, 10]), 6 * np.eye(3), np.zeros(3), "pca-1", temperature=1.0)
    fitted.exemplar_keys = np.array(["raw/Apple/1.jpg", "raw/Kiwi/1.jpg", "raw/Lemon/1.jpg"], object)
    fitted.exemplars = np.eye(3)
    identity = pca.PcaModel("pca-1", np.zeros(3), np.eye(3), np.full(3, 1 / 3), 3, 1.0, 30, 0.0, "f", "t")
    return fitted, identity


def with_photos(features: np.ndarray):
    classifier, projection = model()
    return classifier, features, projection


def test_rank_labels_puts_the_most_probable_label_first_and_keeps_its_index():
    names, scores, order = rank_labels(np.array([[0.2, 0.7, 0.1]]), LABELS, top=3)
    # THEN best first, scores descending, and the indices point back at the labels
    assert names.tolist() == [["Kiwi", "Apple", "Lemon"]] and order.tolist() == [[1, 0, 2]]
    assert scores.tolist() == [[0.7, 0.2, 0.1]]


def test_suggest_ranks_labels_and_names_each_suggested_labels_exemplar():
    # GIVEN a photo near the Kiwi axis
    found = suggest(*with_photos(np.array([[1.0, 6.0, 1.2]])))
    # THEN Kiwi first, scores a distribution over the three labels, and each label's own exemplar beside it
    assert found["labels"][0][0] == "Kiwi" and sorted(found["labels"][0]) == sorted(LABELS)
    assert found["scores"][0].sum() == pytest.approx(1.0, abs=1e-5) and not found["uncertain"][0]
    assert [key.split("/")[1] for key in found["neighbour_keys"][0]] == list(found["labels"][0])
    assert found["neighbour_labels"][0].tolist() == found["labels"][0].tolist()


def test_a_photo_between_two_labels_is_flagged_uncertain_and_a_clear_one_is_not():
    # GIVEN one photo halfway between Apple and Kiwi, another on the Lemon axis
    found = suggest(*with_photos(np.array([[3.5, 3.5, 1.0], [1.0, 1.0, 6.0]])))
    # THEN the first falls under the threshold, the second is well above it
    assert found["scores"][0][0] < UNCERTAIN_BELOW < found["scores"][1][0]
    assert found["uncertain"].tolist() == [True, False]


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



@pytest.mark.parametrize("pointers, message", [
    ((None, None), "no PCA model in this warehouse yet"),
    ((None, "pca-1"), "no classifier for the current PCA"),
    (("classifier-1", "pca-2"), "fitted with pca-1, but pca-2 is current"),
])
def test_suggestions_without_a_classifier_of_the_current_pca_say_why(monkeypatch, pointers, message):
    # GIVEN the pointers (classifier, PCA) of a warehouse, and a classifier fitted with pca-1
    monkeypatch.setattr(suggest_module.classifier, "current_version", lambda catalog: pointers[0])
    monkeypatch.setattr(suggest_module, "current_pca_version", lambda catalog: pointers[1])
    monkeypatch.setattr(suggest_module.classifier, "load", lambda warehouse, version: model()[0])
    # THEN no suggestion is made from a missing or mismatched classifier, and the reason is named
    with pytest.raises(suggest_module.NoClassifier, match=message):
        suggest_module.current_classifier(None, "/wh")
    monkeypatch.setattr(suggest_module, "current_pca_version", lambda catalog: "pca-1")
    monkeypatch.setattr(suggest_module.classifier, "current_version", lambda catalog: "classifier-1")
    assert suggest_module.current_classifier(None, "/wh").pca_version == "pca-1"

"""Fetching from S3 (moto) and local files: bytes, or a quarantine reason, never an exception."""

from emr_job import fetch
from emr_job.images import Rejected


def test_s3_objects_are_fetched_in_order_with_decoded_keys(bucket):
    # GIVEN objects whose keys hold a space and a non-ASCII letter
    keys = [f"raw/Apple Red/pomme é {index}.jpg" for index in range(20)]
    etags = [bucket.put_object(Bucket="verger-test", Key=key, Body=key.encode())["ETag"] for key in keys]
    # WHEN fetched concurrently
    fetched = list(fetch.fetch_all("s3://verger-test", keys, [etag.strip('"') for etag in etags]))
    # THEN each key gets its own bytes, in order
    assert [item.content for item in fetched] == [key.encode() for key in keys]


def test_missing_object_is_a_missing_reason(bucket):
    (item,) = fetch.fetch_all("s3://verger-test", ["raw/A/none.jpg"], ["abc"])
    assert isinstance(item.content, Rejected) and item.content.reason == "missing"


def test_object_replaced_since_the_manifest_is_not_read_under_the_old_etag(bucket):
    bucket.put_object(Bucket="verger-test", Key="raw/A/1.jpg", Body=b"new bytes")
    (item,) = fetch.fetch_all("s3://verger-test", ["raw/A/1.jpg"], ["0123456789abcdef0123456789abcdef"])
    assert item.content.reason == "missing"
    assert "no longer has etag" in item.content.detail


def test_local_missing_file_is_a_missing_reason(tmp_path):
    (item,) = fetch.fetch_all(f"file://{tmp_path}", ["A/1.jpg"], ["e"])
    assert item.content.reason == "missing"


def test_a_local_key_that_climbs_out_of_the_source_folder_is_refused(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (tmp_path / "images").mkdir()
    (item,) = fetch.fetch_all(f"file://{tmp_path / 'images'}", ["../secret.jpg"], ["e"])
    assert item.content.reason == "forbidden" and "outside" in item.content.detail

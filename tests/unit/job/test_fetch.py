"""Fetching from S3 (moto) and local files: bytes, or a quarantine reason, never an exception."""

import pytest

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


@pytest.mark.parametrize("source", ["file", "s3"])
@pytest.mark.parametrize("key", ["../secret.jpg", "inbox/../../secret.jpg", "/etc/secret.jpg", "raw/a\x00.jpg"])
def test_an_unsafe_key_is_refused_before_any_read(source, key, tmp_path, bucket):
    # GIVEN a manifest key that climbs out of the source, is absolute or holds a control character
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (tmp_path / "images").mkdir()
    uri = f"file://{tmp_path / 'images'}" if source == "file" else "s3://verger-test"
    # WHEN fetched  THEN it is quarantined as unsafe, naming the problem
    (item,) = fetch.fetch_all(uri, [key], ["e"])
    assert item.content.reason == "unsafe_key" and repr(key) in item.content.detail


def test_a_symlink_out_of_the_source_folder_is_refused(tmp_path):
    # GIVEN a label folder holding a symbolic link to a photo elsewhere on the disk, and one to a
    # photo inside the source folder
    (tmp_path / "elsewhere.jpg").write_bytes(b"private")
    (tmp_path / "images" / "Kiwi").mkdir(parents=True)
    (tmp_path / "images" / "Kiwi" / "inside.jpg").write_bytes(b"kiwi")
    (tmp_path / "images" / "Kiwi" / "escape.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    (tmp_path / "images" / "Kiwi" / "alias.jpg").symlink_to(tmp_path / "images" / "Kiwi" / "inside.jpg")
    # WHEN fetched
    escape, alias = fetch.fetch_all(f"file://{tmp_path / 'images'}", ["Kiwi/escape.jpg", "Kiwi/alias.jpg"], ["e", "e"])
    # THEN the escaping link is refused with where it leads; the link inside the folder is read
    assert escape.content.reason == "outside_source" and "elsewhere.jpg" in escape.content.detail
    assert alias.content == b"kiwi"


def one_photo(source: str, body: bytes, tmp_path, bucket) -> tuple[str, str]:
    """A/1.jpg holding `body`, in a local folder or the moto bucket: (source URI, etag)."""
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "1.jpg").write_bytes(body)
    etag = bucket.put_object(Bucket="verger-test", Key="A/1.jpg", Body=body)["ETag"].strip('"')
    return (f"file://{tmp_path}" if source == "file" else "s3://verger-test"), etag


@pytest.mark.parametrize("source", ["file", "s3"])
def test_an_object_over_the_size_limit_is_refused_before_the_get_when_the_manifest_says_so(source, tmp_path, bucket, monkeypatch):
    # GIVEN a limit of 10 bytes and a 5-byte photo the manifest says is 11 bytes
    monkeypatch.setattr(fetch, "MAX_OBJECT_BYTES", 10)
    uri, etag = one_photo(source, b"12345", tmp_path, bucket)
    # WHEN fetched with the manifest's sizes  THEN the declared size alone refuses it
    (item,) = fetch.fetch_all(uri, ["A/1.jpg"], [etag], [11])
    assert item.content.reason == "too_large" and "11 bytes" in item.content.detail
    # AND the declared size within the limit lets it through
    (item,) = fetch.fetch_all(uri, ["A/1.jpg"], [etag], [5])
    assert item.content == b"12345"


@pytest.mark.parametrize("source", ["file", "s3"])
def test_an_object_larger_than_its_manifest_says_is_cut_off_at_the_limit(source, tmp_path, bucket, monkeypatch):
    # GIVEN a limit of 10 bytes and an 11-byte photo the manifest claims is 1 byte (or gives no size)
    monkeypatch.setattr(fetch, "MAX_OBJECT_BYTES", 10)
    uri, etag = one_photo(source, b"12345678901", tmp_path, bucket)
    # WHEN fetched  THEN the bytes read enforce the limit
    for sizes in ([1], None):
        (item,) = fetch.fetch_all(uri, ["A/1.jpg"], [etag], sizes)
        assert item.content.reason == "too_large"

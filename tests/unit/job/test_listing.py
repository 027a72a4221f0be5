"""The source listing the sweep and the full recompute split into tasks, and a removal's check."""
from __future__ import annotations

import hashlib

from emr_job.listing import current_etags, list_prefix, list_prefixes
from tests.unit.job.conftest import BUCKET


def listed(source: str) -> set[tuple[str, str, str | None, int | None]]:
    return {row for prefix, recursive in list_prefixes(source) for row in list_prefix(source, prefix, recursive)}


def test_an_s3_listing_covers_every_photo_under_raw_and_inbox_once_split_by_label_folder(bucket):
    # GIVEN photos in two label folders (one of 1,001 objects: two pages), directly under raw/, in
    # the inbox, plus a non-image and a photo outside the photo prefixes
    keys = [f"raw/Kiwi/{i}.jpg" for i in range(1001)] + ["raw/Lemon Meyer/a b.png", "raw/top.jpg", "inbox/x.jpg"]
    for key in keys + ["raw/Kiwi/notes.txt", "exports/y.jpg"]:
        bucket.put_object(Bucket=BUCKET, Key=key, Body=key.encode())

    # WHEN the prefixes are named and each listed on its own
    prefixes = list_prefixes(f"s3://{BUCKET}")
    rows = listed(f"s3://{BUCKET}")

    # THEN one task per label folder, and every photo comes out once with its ETag and label
    assert ("raw/Kiwi/", True) in prefixes and ("raw/Lemon Meyer/", True) in prefixes
    assert sorted(key for key, _, _, _ in rows) == sorted(keys)
    name = "raw/Lemon Meyer/a b.png"
    assert (name, hashlib.md5(name.encode()).hexdigest(), "Lemon Meyer", len(name)) in rows
    assert ("inbox/x.jpg", hashlib.md5(b"inbox/x.jpg").hexdigest(), None, len("inbox/x.jpg")) in rows


def test_a_local_listing_keys_photos_relative_to_the_folder_with_their_md5(tmp_path):
    # GIVEN a <Label>/<image> folder with a photo at its root and a non-image
    (tmp_path / "Kiwi" / "deep").mkdir(parents=True)
    for relative in ("Kiwi/1.jpg", "Kiwi/deep/2.jpg", "root.png", "Kiwi/notes.txt"):
        (tmp_path / relative).write_bytes(relative.encode())

    # WHEN it is listed
    rows = listed(f"file://{tmp_path}")

    # THEN each photo once, keyed relative to the folder, etag = MD5 of its bytes
    assert rows == {("Kiwi/1.jpg", hashlib.md5(b"Kiwi/1.jpg").hexdigest(), "Kiwi", 10),
                    ("Kiwi/deep/2.jpg", hashlib.md5(b"Kiwi/deep/2.jpg").hexdigest(), "deep", 15),
                    ("root.png", hashlib.md5(b"root.png").hexdigest(), None, 8)}


def test_a_local_listing_never_reads_a_link_leading_outside_the_folder(tmp_path):
    # GIVEN a label folder holding a symbolic link to a photo elsewhere on the disk
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"private")
    (tmp_path / "source" / "Kiwi").mkdir(parents=True)
    (tmp_path / "source" / "Kiwi" / "link.jpg").symlink_to(outside)

    # WHEN the folder is listed
    [(key, etag, label, size)] = listed(f"file://{tmp_path / 'source'}")

    # THEN the link is listed (the job quarantines it) without its bytes: no size, no MD5 of them
    assert (key, label, size) == ("Kiwi/link.jpg", "Kiwi", None)
    assert etag != hashlib.md5(b"private").hexdigest()


def test_a_removal_sees_whether_the_object_exists_again_and_under_which_etag(bucket):
    # GIVEN one removed key uploaded again, one really gone
    bucket.put_object(Bucket=BUCKET, Key="raw/Kiwi/back.jpg", Body=b"new bytes")

    # WHEN their current state is read
    present = current_etags(f"s3://{BUCKET}", ["raw/Kiwi/back.jpg", "raw/Kiwi/gone.jpg"])

    # THEN only the re-uploaded one is present, with its new etag
    assert present == {"raw/Kiwi/back.jpg": hashlib.md5(b"new bytes").hexdigest()}

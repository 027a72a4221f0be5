"""Manifests from uploads: dedupe, folder grouping, size limit, stable ids, write-once."""
from __future__ import annotations

import dataclasses
import json
import random

import boto3

from contract.manifest import parse_manifest
from functions.batching import (
    full_manifest,
    incremental_manifests,
    latest_per_key,
    pack_by_folder,
    write_manifest,
)
from functions.events import ImageUpload

BUCKET = "verger-photos-example"  # the `bucket` fixture creates it


def upload(key: str, etag: str = "e0", sequencer: str | None = "01") -> ImageUpload:
    return ImageUpload(key=key, etag=etag, size=100, sequencer=sequencer)


def keys(chunks: list[list[ImageUpload]]) -> list[list[str]]:
    return [[item.key for item in chunk] for chunk in chunks]


def test_a_key_seen_twice_keeps_its_latest_version_by_sequencer():
    # GIVEN the same key overwritten, the newer sequencer shorter as a string but larger as hex
    older = upload("raw/Kiwi/1.jpg", etag="old", sequencer="00FF")
    newer = upload("raw/Kiwi/1.jpg", etag="new", sequencer="1A0")

    # WHEN deduplicated, in either arrival order
    # THEN the newer version wins
    assert [u.etag for u in latest_per_key([older, newer])] == ["new"]
    assert [u.etag for u in latest_per_key([newer, older])] == ["new"]


def test_folders_are_kept_whole_when_they_fit_and_cut_when_they_do_not():
    # GIVEN folders of 2, 2 and 5 images and a limit of 3
    uploads = latest_per_key(
        [upload(f"raw/{folder}/{i}.jpg") for folder, n in (("A", 2), ("B", 2), ("C", 5)) for i in range(n)]
    )

    # WHEN packed
    chunks = pack_by_folder(uploads, 3)

    # THEN A and B each stay whole, C is cut into full chunks, and no chunk exceeds the limit
    assert keys(chunks) == [
        ["raw/A/0.jpg", "raw/A/1.jpg"],
        ["raw/B/0.jpg", "raw/B/1.jpg"],
        ["raw/C/0.jpg", "raw/C/1.jpg", "raw/C/2.jpg"],
        ["raw/C/3.jpg", "raw/C/4.jpg"],
    ]


def test_small_folders_share_a_manifest():
    # GIVEN three folders of one image and a limit of 5
    uploads = latest_per_key([upload(f"raw/{folder}/1.jpg") for folder in "CAB"])

    # WHEN packed
    # THEN one chunk holds them all, in folder order
    assert keys(pack_by_folder(uploads, 5)) == [["raw/A/1.jpg", "raw/B/1.jpg", "raw/C/1.jpg"]]


def test_a_replayed_batch_in_another_order_gives_the_same_batch_ids():
    # GIVEN 50 uploads over 7 folders with duplicates, and the same records shuffled
    uploads = [upload(f"raw/F{i % 7}/{i}.jpg", etag=f"e{i}") for i in range(50)] * 2
    shuffled = random.Random(4).sample(uploads, len(uploads))

    # WHEN manifests are cut from both, with a limit of 8
    first = incremental_manifests(uploads, BUCKET, 8)
    second = incremental_manifests(shuffled, BUCKET, 8)

    # THEN the ids and contents match, each image appears once, and none exceeds the limit
    assert [m.batch_id for m in first] == [m.batch_id for m in second]
    assert [m.items for m in first] == [m.items for m in second]
    assert sorted(item.key for m in first for item in m.items) == sorted({u.key for u in uploads})
    assert max(len(m.items) for m in first) <= 8


def test_a_manifest_is_written_once_and_a_replay_leaves_it_untouched(bucket):
    # GIVEN a manifest already written
    s3 = boto3.client("s3")
    [manifest] = incremental_manifests([upload("raw/Kiwi/1.jpg")], BUCKET, 10)
    assert write_manifest(s3, BUCKET, manifest) is True
    key = f"manifests/{manifest.batch_id}.json"
    written = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    # WHEN the same batch (with a later created_at) is written again
    [replay] = incremental_manifests([upload("raw/Kiwi/1.jpg")], BUCKET, 10)
    replayed = write_manifest(s3, BUCKET, dataclasses.replace(replay, created_at="2099-01-01T00:00:00+00:00"))

    # THEN the second write reports nothing new, the stored bytes are the first ones, and the job can parse them
    assert replayed is False
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == written
    assert parse_manifest(written).items == manifest.items


def test_a_full_manifest_pages_through_every_photo_under_raw_and_inbox(bucket):
    # GIVEN 1,003 images under raw/ (more than one 1,000-key page), a non-image and an inbox photo
    s3 = boto3.client("s3")
    for i in range(1003):
        s3.put_object(Bucket=BUCKET, Key=f"raw/Kiwi/{i:04d}.jpg", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="raw/Kiwi/notes.txt", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="inbox/1.jpg", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="exports/2.jpg", Body=b"x")

    # WHEN the full manifest is built
    manifest = full_manifest(s3, BUCKET)

    # THEN it holds exactly the 1,003 labelled photos and the inbox photo, with unquoted ETags
    assert manifest.mode == "full"
    assert len(manifest.items) == 1004
    assert {item.key for item in manifest.items} == {f"raw/Kiwi/{i:04d}.jpg" for i in range(1003)} | {"inbox/1.jpg"}
    assert all('"' not in item.etag for item in manifest.items)
    assert json.loads(manifest.to_json())["items"][0]["size"] == 1


def test_a_full_manifest_leaves_out_photos_with_unsafe_keys(bucket):
    # GIVEN a photo and one whose key holds a '..' segment (S3 stores such keys literally)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="inbox/1.jpg", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="inbox/../../tmp/x.jpg", Body=b"x")
    # WHEN the full manifest is built  THEN only the safe key is in it
    assert [item.key for item in full_manifest(s3, BUCKET).items] == ["inbox/1.jpg"]

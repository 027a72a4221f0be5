"""Manifests from uploads: dedupe, folder grouping, size limit, stable ids, write-once."""
from __future__ import annotations

import dataclasses
import json
import random

import boto3

from contract.manifest import parse_manifest
from functions.batching import (
    listing_manifest,
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


def test_a_full_manifest_carries_no_items_and_two_requests_get_two_batch_ids():
    # WHEN two full recomputes are requested at different times
    first = listing_manifest("full", BUCKET, "2026-11-23T10:00:00+00:00")
    second = listing_manifest("full", BUCKET, "2026-11-23T11:00:00+00:00")

    # THEN neither lists anything (the job lists raw/ and inbox/ itself), and their batch ids differ
    assert first.mode == "full" and first.items == () and first.nonce
    assert first.batch_id != second.batch_id
    assert parse_manifest(first.to_json()) == first



def test_a_removal_after_an_upload_of_the_same_key_wins_and_reaches_the_manifest_as_a_removal():
    # GIVEN an upload, then (later sequencer) a removal of the same key
    upload = ImageUpload("raw/Kiwi/1.jpg", "e1", 10, "0A")
    removal = ImageUpload("raw/Kiwi/1.jpg", "", None, "0B", removed=True)

    # WHEN they are cut into manifests
    [manifest] = incremental_manifests([removal, upload], BUCKET, 10)

    # THEN only the removal is kept, marked as such
    assert [(item.key, item.removed) for item in manifest.items] == [("raw/Kiwi/1.jpg", True)]

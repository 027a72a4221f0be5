"""The manifest contract: content-derived ids and validation that names the problem."""
import json

import pytest

from contract.manifest import ManifestError, ManifestItem, build_manifest, parse_manifest


def items(*pairs):
    return [ManifestItem(key, etag) for key, etag in pairs]


def test_batch_id_is_the_same_for_the_same_content_in_any_order_and_time():
    # GIVEN the same images listed in two orders
    first = build_manifest("incremental", "s3://b", items(("raw/A/1.jpg", "e1"), ("raw/B/2.jpg", "e2")))
    second = build_manifest("incremental", "s3://b", items(("raw/B/2.jpg", "e2"), ("raw/A/1.jpg", "e1")))
    # THEN the ids match, and a changed etag gives another id
    assert first.batch_id == second.batch_id
    changed = build_manifest("incremental", "s3://b", items(("raw/A/1.jpg", "e9"), ("raw/B/2.jpg", "e2")))
    assert changed.batch_id != first.batch_id


def test_round_trip_keeps_decoded_keys_with_spaces_and_unicode():
    manifest = build_manifest("incremental", "s3://b", items(("raw/Apple Red 1/pomme é.jpg", "e")))
    parsed = parse_manifest(manifest.to_json())
    assert parsed == manifest
    assert parsed.items[0].key == "raw/Apple Red 1/pomme é.jpg"
    assert parsed.bucket == "b"


def test_duplicate_keys_in_one_batch_keep_the_last_version():
    manifest = build_manifest("incremental", "s3://b", items(("raw/A/1.jpg", "old"), ("raw/A/1.jpg", "new")))
    assert [(item.key, item.etag) for item in manifest.items] == [("raw/A/1.jpg", "new")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda body: body.update(version=7), "unknown manifest version 7"),
        (lambda body: body.pop("items"), "missing the field 'items'"),
        (lambda body: body.pop("batch_id"), "missing the field 'batch_id'"),
        (lambda body: body.update(source="http://b"), "bad source URI 'http://b'"),
        (lambda body: body.update(source="s3://"), "no bucket"),
        (lambda body: body.update(source="s3://b/raw"), "must be a bucket"),
        (lambda body: body.update(source="file://../images"), "absolute path"),
        (lambda body: body.update(mode="sometimes"), "unknown mode 'sometimes'"),
        (lambda body: body["items"].append({"key": "raw/A/x.jpg"}), "item 1 needs a non-empty 'etag'"),
        # the batch id names files (reports/<id>.json): it must not climb out of their folder
        (lambda body: body.update(batch_id="../../tmp/x"), "batch_id '../../tmp/x' is not one plain name"),
        (lambda body: body.update(batch_id="incr-1/2"), "is not one plain name"),
    ],
)
def test_invalid_manifest_is_refused_with_the_reason(change, message):
    # GIVEN a valid manifest with one thing broken
    body = json.loads(build_manifest("incremental", "s3://b", items(("raw/A/1.jpg", "e"))).to_json())
    change(body)
    # WHEN it is parsed THEN the error names what is wrong
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(body))


def test_text_that_is_not_json_is_refused():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{not json")


def test_a_removal_needs_no_etag_and_changes_the_batch_id():
    # GIVEN the same key once uploaded and once removed
    upload = build_manifest("incremental", "s3://b", [ManifestItem("raw/A/1.jpg", "e1")])
    removal = build_manifest("incremental", "s3://b", [ManifestItem("raw/A/1.jpg", "", removed=True)])
    # THEN they are different batches, and a removal survives the round trip without an etag
    assert upload.batch_id != removal.batch_id
    assert parse_manifest(removal.to_json()) == removal


def test_an_item_without_etag_that_is_not_a_removal_is_refused():
    body = json.loads(build_manifest("incremental", "s3://b", items(("raw/A/1.jpg", "e"))).to_json())
    body["items"][0]["etag"] = ""
    with pytest.raises(ManifestError, match="only removals have none"):
        parse_manifest(json.dumps(body))


def test_listing_requests_differ_by_nonce_and_round_trip():
    first = build_manifest("sweep", "s3://b", [], nonce="2026-11-23T00:00:00Z")
    again = build_manifest("sweep", "s3://b", [], nonce="2026-11-23T00:00:00Z")
    later = build_manifest("sweep", "s3://b", [], nonce="2026-11-23T06:00:00Z")
    assert first.batch_id == again.batch_id != later.batch_id
    assert parse_manifest(later.to_json()) == later


def test_a_listing_mode_manifest_with_items_is_refused():
    # WHEN a sweep manifest is built with an item (the job lists the source itself in that mode)
    # THEN it is refused, naming the rule
    with pytest.raises(ManifestError, match="'sweep' manifest carries no items"):
        build_manifest("sweep", "s3://b", items(("raw/A/1.jpg", "e")), nonce="n")


def test_a_maintain_manifest_round_trips_with_its_retention_and_refuses_a_bad_one():
    # GIVEN an upkeep request with a 7-day snapshot retention
    manifest = build_manifest("maintain", "s3://b", [], nonce="2026-11-23T03:00:00Z", extra={"retention_days": 7})
    # THEN it reads back unchanged
    assert parse_manifest(manifest.to_json()) == manifest
    # AND one without a retention, with a negative or non-numeric one, or with photos is refused by name
    for extra in ({}, {"retention_days": -1}, {"retention_days": "7"}, {"retention_days": True}):
        with pytest.raises(ManifestError, match="extra.retention_days"):
            build_manifest("maintain", "s3://b", [], nonce="n", extra=extra)
    with pytest.raises(ManifestError, match="'maintain' manifest carries no items"):
        build_manifest("maintain", "s3://b", items(("raw/A/1.jpg", "e")), nonce="n", extra={"retention_days": 7})

"""Parsing SQS bodies and S3 notifications: what becomes an image, what is dropped, what is poison."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.parser.models import S3Model, SqsModel

from functions.events import (
    DropReason,
    EventKind,
    MalformedMessage,
    UnsupportedEvent,
    event_kind,
    parse_s3_notification,
    parse_sqs_body,
)


BUCKET = "verger-photos-example"  # named in events/*.json
EVENTS = Path(__file__).resolve().parents[3] / "events"


def load_event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def notification(key: str, bucket: str = BUCKET, event_name: str = "ObjectCreated:Put") -> dict:
    """A real-shaped S3 notification (from events/s3-put.json) with the fields that vary."""
    body = load_event("s3-put.json")
    record = body["Records"][0]
    record["eventName"] = event_name
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["object"]["key"] = key
    return body


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("raw/Apple+Red+1/r_12_100.jpg", "raw/Apple Red 1/r_12_100.jpg"),
        ("raw/Ma%C3%B1ana+Lime/0_100.JPG", "raw/Mañana Lime/0_100.JPG"),
        ("raw/Kiwi/a%2Bb.jpeg", "raw/Kiwi/a+b.jpeg"),
        ("inbox/IMG_0001.png", "inbox/IMG_0001.png"),
    ],
)
def test_keys_are_url_decoded_with_plus_as_space(encoded, decoded):
    # GIVEN a notification whose key S3 URL-encoded
    body = json.dumps(notification(encoded))

    # WHEN the SQS body is parsed
    parsed = parse_sqs_body(body, BUCKET)

    # THEN the upload carries the decoded key
    assert [upload.key for upload in parsed.uploads] == [decoded]


@pytest.mark.parametrize(
    ("key", "bucket", "event_name", "reason"),
    [
        ("raw/Kiwi/", BUCKET, "ObjectCreated:Put", DropReason.FOLDER_MARKER),
        ("raw/Kiwi/notes.txt", BUCKET, "ObjectCreated:Put", DropReason.NOT_AN_IMAGE),
        ("models/weights.jpg", BUCKET, "ObjectCreated:Put", DropReason.OUTSIDE_PREFIX),
        ("manifests/incr-1.json", BUCKET, "ObjectCreated:Put", DropReason.OUTSIDE_PREFIX),
        ("raw/Kiwi/1.jpg", "someone-elses-bucket", "ObjectCreated:Put", DropReason.OTHER_BUCKET),
        ("raw/Kiwi/1.jpg", BUCKET, "ObjectRestore:Completed", DropReason.NOT_OBJECT_CREATED),
        ("raw/Kiwi/notes.txt", BUCKET, "ObjectRemoved:Delete", DropReason.NOT_AN_IMAGE),
    ],
)
def test_notifications_that_are_not_image_uploads_are_dropped_with_a_reason(key, bucket, event_name, reason):
    # GIVEN a notification that is not an image upload to the bucket's raw/ or inbox/
    body = json.dumps(notification(key, bucket, event_name))

    # WHEN it is parsed
    parsed = parse_sqs_body(body, BUCKET)

    # THEN no upload comes out, and the drop says why
    assert parsed.uploads == ()
    assert [dropped.reason for dropped in parsed.dropped] == [reason]


@pytest.mark.parametrize(
    "encoded",
    [
        "inbox/..%2F..%2F..%2Ftmp%2Fx.jpg",  # S3 keeps '..' literally; a path join would climb out
        "raw/Kiwi/../../manifests/x.jpg",
        "raw/Kiwi/a%0Ab.jpg",  # a newline
        "raw/Kiwi/a%00.jpg",  # NUL
    ],
)
def test_an_upload_with_an_unsafe_key_is_dropped_as_unsafe(encoded):
    # GIVEN an image upload whose decoded key climbs out of its folder or holds a control character
    body = json.dumps(notification(encoded))

    # WHEN it is parsed
    parsed = parse_sqs_body(body, BUCKET)

    # THEN it never becomes a manifest item, and the drop says why
    assert parsed.uploads == ()
    assert [dropped.reason for dropped in parsed.dropped] == [DropReason.UNSAFE_KEY]


def test_an_s3_test_event_is_dropped_not_failed():
    # GIVEN the s3:TestEvent S3 sends when notifications are configured (from events/sqs-s3-batch.json)
    body = load_event("sqs-s3-batch.json")["Records"][0]["body"]

    # WHEN it is parsed
    parsed = parse_sqs_body(body, BUCKET)

    # THEN it is a drop with its own reason
    assert [dropped.reason for dropped in parsed.dropped] == [DropReason.TEST_EVENT]
    assert parsed.uploads == ()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("this is not JSON {", "body is not JSON"),
        ("", "body is not JSON"),
        ('"just a string"', "not an S3 notification"),
        ('{"Records": "nope"}', "not an S3 notification: Records"),
        ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "lacks eventName or s3.object"),
        ('{"Records": [{}]}', "lacks eventName or s3.object"),
    ],
)
def test_a_body_that_is_not_an_s3_notification_is_malformed_with_the_problem_named(body, problem):
    # GIVEN / WHEN a body that is not JSON or not an S3 notification is parsed
    # THEN it raises MalformedMessage saying what is wrong (the record then goes to the DLQ)
    with pytest.raises(MalformedMessage, match=problem):
        parse_sqs_body(body, BUCKET)


def test_an_upload_without_a_hexadecimal_sequencer_is_malformed():
    # GIVEN an ObjectCreated notification whose sequencer is not hex
    body = notification("raw/Kiwi/1.jpg")
    body["Records"][0]["s3"]["object"]["sequencer"] = "not-hex"

    # WHEN / THEN parsing refuses it by name
    with pytest.raises(MalformedMessage, match="sequencer 'not-hex'"):
        parse_s3_notification(body, BUCKET)


def test_an_upload_keeps_etag_size_and_sequencer():
    # GIVEN events/s3-put.json
    body = load_event("s3-put.json")

    # WHEN it is parsed
    [upload] = parse_s3_notification(body, BUCKET).uploads

    # THEN the manifest item's fields come from the notification
    assert (upload.etag, upload.size, upload.sequencer, upload.folder) == (
        "0123456789abcdef0123456789abcdef", 4718, "0A1B2C3D4E5F678901", "raw/Apple Red 1")


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (load_event("sqs-s3-batch.json"), EventKind.SQS),
        (load_event("s3-put.json"), EventKind.S3),
        (load_event("full-recompute.json"), EventKind.FULL_RECOMPUTE),
    ],
)
def test_each_event_file_is_recognised(event, kind):
    # GIVEN / WHEN / THEN each shape in events/ maps to its kind
    assert event_kind(event) is kind


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"action": "rebuild"}, "unknown action 'rebuild'"),
        ({"Records": [{"eventSource": "aws:kinesis"}]}, "records from 'aws:kinesis'"),
        ({"Records": []}, "expected an SQS batch"),
        ([1, 2], "expected an SQS batch"),
    ],
)
def test_other_events_are_refused_by_name(event, problem):
    # GIVEN / WHEN / THEN anything else raises UnsupportedEvent naming what arrived
    with pytest.raises(UnsupportedEvent, match=problem):
        event_kind(event)


def test_the_event_files_have_the_shapes_lambda_delivers():
    # GIVEN the event files sam local invoke is given
    sqs = load_event("sqs-s3-batch.json")

    # WHEN / THEN they validate as SQS and S3 events, each SQS md5OfBody matching its body
    SqsModel.model_validate(sqs)
    S3Model.model_validate(load_event("s3-put.json"))
    assert all(hashlib.md5(r["body"].encode()).hexdigest() == r["md5OfBody"] for r in sqs["Records"])


def test_an_object_removed_notification_becomes_a_removal_of_the_decoded_key():
    # GIVEN events/s3-delete.json: ObjectRemoved:Delete as S3 sends it (no eTag, no size)
    event = load_event("s3-delete.json")

    # WHEN it is parsed as an SQS body
    parsed = parse_sqs_body(json.dumps(event), "verger-photos-example")

    # THEN one removal comes out, for the decoded key, with its sequencer and no etag
    [removal] = parsed.uploads
    assert removal.removed and removal.key == "raw/Apple Red 1/r_12_100.jpg"
    assert removal.etag == "" and removal.sequencer == "0A1B2C3D4E5F6789AB"

"""Parse what arrives at the function into image uploads, dropped notifications or poison.

Shapes that arrive: an SQS batch whose bodies are S3 notifications (the deployed path), a plain S3
notification (`sam local invoke -e events/s3-put.json`), an action (`{"action": "full-recompute"}`,
`"reconcile"` and `"maintain"` from the schedules, `"rerun"` and `"start-cluster"` from a person),
and EventBridge's EMR events about a failed run.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser.models import S3Model, S3RecordModel
from pydantic import ValidationError

from contract.layout import PHOTO_PREFIXES, is_image_key, key_problem

FULL_RECOMPUTE_ACTION = "full-recompute"
RECONCILE_ACTION = "reconcile"
RERUN_ACTION = "rerun"
START_CLUSTER_ACTION = "start-cluster"
MAINTAIN_ACTION = "maintain"
EMR_STEP_EVENT = ("aws.emr", "EMR Step Status Change")
SERVERLESS_RUN_EVENT = ("aws.emr-serverless", "EMR Serverless Job Run State Change")
# ObjectRemoved:Delete and ObjectRemoved:DeleteMarkerCreated (versioned buckets) both mean the
# photo is gone from the bucket's point of view.
OBJECT_REMOVED = "ObjectRemoved:"
S3_TEST_EVENT = "s3:TestEvent"

logger = Logger(child=True)


class EventKind(Enum):
    SQS = "sqs"
    S3 = "s3"
    FULL_RECOMPUTE = "full-recompute"
    RECONCILE = "reconcile"
    RERUN = "rerun"
    START_CLUSTER = "start-cluster"
    MAINTAIN = "maintain"
    EMR_STEP_CHANGE = "emr-step-change"
    SERVERLESS_RUN_CHANGE = "serverless-run-change"


ACTIONS = {
    FULL_RECOMPUTE_ACTION: EventKind.FULL_RECOMPUTE,
    RECONCILE_ACTION: EventKind.RECONCILE,
    RERUN_ACTION: EventKind.RERUN,
    START_CLUSTER_ACTION: EventKind.START_CLUSTER,
    MAINTAIN_ACTION: EventKind.MAINTAIN,
}
EVENTBRIDGE_KINDS = {
    EMR_STEP_EVENT: EventKind.EMR_STEP_CHANGE,
    SERVERLESS_RUN_EVENT: EventKind.SERVERLESS_RUN_CHANGE,
}


class UnsupportedEvent(ValueError):
    """The invocation event is none of the shapes this function handles."""


class MalformedMessage(ValueError):
    """A body that is not an S3 notification; SQS retries it and then moves it to the DLQ."""


class DropReason(str, Enum):
    """Why a notification is acknowledged without becoming a manifest item."""

    TEST_EVENT = "test-event"
    NOT_OBJECT_CREATED = "not-object-created"
    OTHER_BUCKET = "other-bucket"
    OUTSIDE_PREFIX = "outside-prefix"
    FOLDER_MARKER = "folder-marker"
    NOT_AN_IMAGE = "not-an-image"
    UNSAFE_KEY = "unsafe-key"


@dataclass(frozen=True)
class ImageUpload:
    """One image that landed in the bucket, or left it (`removed`: an `ObjectRemoved` notification,
    which carries no eTag); `key` is already URL-decoded."""

    key: str
    etag: str
    size: int | None
    sequencer: str | None
    removed: bool = False

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.key)


@dataclass(frozen=True)
class Dropped:
    key: str | None
    reason: DropReason


@dataclass(frozen=True)
class ParsedNotification:
    """What one S3 notification (one SQS body, or one plain S3 event) holds."""

    uploads: tuple[ImageUpload, ...]
    dropped: tuple[Dropped, ...]


def event_kind(event: Any) -> EventKind:
    """Tell the accepted invocation shapes apart, refusing anything else by name."""
    if isinstance(event, dict):
        if "action" in event:
            if event["action"] in ACTIONS:
                return ACTIONS[event["action"]]
            raise UnsupportedEvent(
                f"unknown action {event['action']!r}: expected one of {', '.join(map(repr, ACTIONS))}"
            )
        if "detail-type" in event:
            origin = (event.get("source"), event.get("detail-type"))
            if origin in EVENTBRIDGE_KINDS:
                return EVENTBRIDGE_KINDS[origin]
            raise UnsupportedEvent(f"EventBridge event {origin!r}: expected EMR step or EMR Serverless job run changes")
        records = event.get("Records")
        if isinstance(records, list) and records and isinstance(records[0], dict):
            source = records[0].get("eventSource")
            if source == "aws:sqs":
                return EventKind.SQS
            if source == "aws:s3":
                return EventKind.S3
            raise UnsupportedEvent(f"records from {source!r}: expected aws:sqs or aws:s3")
    raise UnsupportedEvent(
        "expected an SQS batch, an S3 notification, an EMR event or {\"action\": …}"
    )


def parse_sqs_body(body: str, bucket: str) -> ParsedNotification:
    """Parse one SQS body holding an S3 notification.

    Raises
    ------
    MalformedMessage
        When the body is not JSON or not an S3 notification: such a message must reach the DLQ,
        where someone can look at it, rather than vanish.
    """
    try:
        notification = json.loads(body)
    except (json.JSONDecodeError, TypeError) as error:
        raise MalformedMessage(f"body is not JSON: {error}") from None
    if isinstance(notification, dict) and notification.get("Event") == S3_TEST_EVENT:
        logger.info("dropped s3:TestEvent", extra={"reason": DropReason.TEST_EVENT.value})
        return ParsedNotification(uploads=(), dropped=(Dropped(None, DropReason.TEST_EVENT),))
    return parse_s3_notification(notification, bucket)


def parse_s3_notification(notification: Any, bucket: str) -> ParsedNotification:
    """Keep the image uploads to `bucket` under the accepted prefixes; drop the rest, logged."""
    try:
        records = S3Model.model_validate(notification).Records
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise MalformedMessage(f"not an S3 notification: {where}: {first['msg']}") from None
    except (AttributeError, TypeError):
        # Powertools' S3RecordModel "before" validator dereferences `s3.object` and `eventName`
        # without checking them, so a record lacking either escapes pydantic as a bare error.
        raise MalformedMessage("not an S3 notification: a record lacks eventName or s3.object") from None
    uploads: list[ImageUpload] = []
    dropped: list[Dropped] = []
    for record in records:
        outcome = classify_record(record, bucket)
        if isinstance(outcome, Dropped):
            # An unsafe key is someone's photo Verger will not store: worth a warning, not just info.
            log = logger.warning if outcome.reason is DropReason.UNSAFE_KEY else logger.info
            log("dropped S3 notification", extra={"key": outcome.key, "reason": outcome.reason.value})
            dropped.append(outcome)
        else:
            uploads.append(outcome)
    return ParsedNotification(uploads=tuple(uploads), dropped=tuple(dropped))


def classify_record(record: S3RecordModel, bucket: str) -> ImageUpload | Dropped:
    """An `ImageUpload` (an upload or a removal), or the reason this notification is neither."""
    s3_object = record.s3.object
    key = unquote_plus(s3_object.key) if s3_object else None
    removed = record.eventName.startswith(OBJECT_REMOVED)
    if not (record.eventName.startswith("ObjectCreated:") or removed) or s3_object is None or key is None:
        return Dropped(key, DropReason.NOT_OBJECT_CREATED)
    if record.s3.bucket.name != bucket:
        return Dropped(key, DropReason.OTHER_BUCKET)
    if key_problem(key):
        return Dropped(key, DropReason.UNSAFE_KEY)
    if not key.startswith(PHOTO_PREFIXES):
        return Dropped(key, DropReason.OUTSIDE_PREFIX)
    if key.endswith("/"):
        return Dropped(key, DropReason.FOLDER_MARKER)
    if not is_image_key(key):
        return Dropped(key, DropReason.NOT_AN_IMAGE)
    if s3_object.sequencer and not _is_hex(s3_object.sequencer):
        raise MalformedMessage(f"sequencer {s3_object.sequencer!r} for {key!r} is not hexadecimal")
    if removed:
        return ImageUpload(key=key, etag="", size=None, sequencer=s3_object.sequencer, removed=True)
    etag = (s3_object.eTag or "").strip('"')
    if not etag:
        raise MalformedMessage(f"ObjectCreated notification for {key!r} has no eTag")
    return ImageUpload(
        key=key,
        etag=etag,
        size=None if s3_object.size is None else int(s3_object.size),
        sequencer=s3_object.sequencer,
    )


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True

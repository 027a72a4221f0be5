"""The trigger's work: notifications in, manifests written and jobs started, outcomes out.

Plain functions over injected clients, so that every path runs without Lambda. A record is
reported successful only once every manifest holding its images is written and its job started.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from botocore.exceptions import BotoCoreError, ClientError

from contract.layout import step_arguments
from contract.manifest import Manifest
from functions import attempts
from functions.batching import (
    incremental_manifests,
    listing_manifest,
    maintenance_manifest,
    manifest_uri,
    write_manifest,
)
from functions.events import (
    DropReason,
    MalformedMessage,
    ParsedNotification,
    parse_s3_notification,
    parse_sqs_body,
)
from functions.launchers import Launch, Launcher, LaunchError
from functions.settings import Settings

SUBMISSION_ERRORS = (ClientError, BotoCoreError, LaunchError)

logger = Logger(child=True)
tracer = Tracer()


class SubmissionFailed(RuntimeError):
    """The manifest or job of a batch holding this record's images could not be created."""


@dataclass(frozen=True)
class Submission:
    batch_id: str
    manifest_uri: str
    images: int
    manifest_created: bool
    launch: Launch

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "manifest": self.manifest_uri,
            "images": self.images,
            "submitted": self.launch.submitted,
            "run_id": self.launch.run_id,
        }


@dataclass
class BatchOutcome:
    """What happened to a batch of notifications; `failures` is keyed by SQS message id."""

    records: int
    accepted_images: int = 0
    dropped: Counter[DropReason] = field(default_factory=Counter)
    submissions: list[Submission] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)

    def settle(self, record: Any) -> None:
        """Record handler for powertools' BatchProcessor: re-raise this record's failure, if any."""
        failure = self.failures.get(record.message_id)
        if failure is not None:
            raise failure

    def raise_for_failures(self) -> None:
        """Without SQS there is no partial response: fail the invocation so Lambda retries it."""
        if self.failures:
            raise next(iter(self.failures.values()))

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "accepted_images": self.accepted_images,
            "dropped": {reason.value: count for reason, count in self.dropped.items()},
            "batches": [submission.as_dict() for submission in self.submissions],
            "failures": {origin: str(error) for origin, error in self.failures.items()},
        }


def process_sqs_records(
    records: Sequence[Mapping[str, Any]], settings: Settings, s3: Any, launcher: Launcher
) -> BatchOutcome:
    """Parse every SQS record, then submit manifests for all accepted images at once."""
    parsed: dict[str, ParsedNotification] = {}
    malformed: dict[str, Exception] = {}
    for record in records:
        message_id = str(record.get("messageId"))
        try:
            parsed[message_id] = parse_sqs_body(record.get("body"), settings.bucket)
        except MalformedMessage as error:
            logger.warning("malformed message", extra={"message_id": message_id, "error": str(error)})
            malformed[message_id] = error
    outcome = submit_notifications(parsed, settings, s3, launcher)
    outcome.records = len(records)
    outcome.failures.update(malformed)
    return outcome


def process_s3_event(
    event: Mapping[str, Any], settings: Settings, s3: Any, launcher: Launcher
) -> BatchOutcome:
    """A plain S3 notification (direct invocation, `sam local invoke`): one origin, no SQS."""
    notification = parse_s3_notification(event, settings.bucket)
    outcome = submit_notifications({"s3-event": notification}, settings, s3, launcher)
    outcome.records = len(event["Records"])
    return outcome


def submit_notifications(
    notifications: Mapping[str, ParsedNotification], settings: Settings, s3: Any, launcher: Launcher
) -> BatchOutcome:
    """Manifests for the images of all notifications; a failed one fails exactly its origins."""
    origins: dict[str, set[str]] = {}
    outcome = BatchOutcome(records=len(notifications))
    for origin, notification in notifications.items():
        outcome.dropped.update(dropped.reason for dropped in notification.dropped)
        for upload in notification.uploads:
            origins.setdefault(upload.key, set()).add(origin)
    uploads = [upload for notification in notifications.values() for upload in notification.uploads]
    for manifest in incremental_manifests(uploads, settings.bucket, settings.max_images_per_manifest):
        try:
            outcome.submissions.append(submit_manifest(manifest, settings, s3, launcher))
        except SUBMISSION_ERRORS as error:
            logger.exception("submission failed", extra={"batch_id": manifest.batch_id})
            failure = SubmissionFailed(f"batch {manifest.batch_id}: {error}")
            for item in manifest.items:
                outcome.failures.update(dict.fromkeys(origins[item.key], failure))
        else:
            outcome.accepted_images += len(manifest.items)
    return outcome


def full_recompute(settings: Settings, s3: Any, launcher: Launcher) -> Submission:
    """One item-less `full` manifest (the job lists raw/ and inbox/ itself), and its job."""
    nonce = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return submit_manifest(listing_manifest("full", settings.bucket, nonce), settings, s3, launcher)


def maintain(settings: Settings, s3: Any, launcher: Launcher, scheduled_time: str | None) -> Submission:
    """Table upkeep as a run of the job (`maintain` manifest), with the stack's snapshot retention:
    the schedule's time is the nonce, so a schedule delivered twice starts one run."""
    nonce = scheduled_time or datetime.now(timezone.utc).isoformat(timespec="microseconds")
    manifest = maintenance_manifest(settings.bucket, nonce, settings.retention_days)
    return submit_manifest(manifest, settings, s3, launcher)


@tracer.capture_method
def submit_manifest(manifest: Manifest, settings: Settings, s3: Any, launcher: Launcher) -> Submission:
    """Write the manifest, then start its first attempt; both steps are safe to repeat."""
    logger.set_correlation_id(manifest.batch_id)
    created = write_manifest(s3, settings.bucket, manifest)
    launch = launch_attempt(manifest.batch_id, settings, s3, launcher, attempt=1)
    uri = manifest_uri(settings.bucket, manifest.batch_id)
    logger.info(
        "batch submitted" if launch.submitted else "batch already submitted",
        extra={"manifest": uri, "images": len(manifest.items), "run_id": launch.run_id},
    )
    return Submission(manifest.batch_id, uri, len(manifest.items), created, launch)


def launch_attempt(batch_id: str, settings: Settings, s3: Any, launcher: Launcher, attempt: int) -> Launch:
    """Start one attempt of a batch whose manifest is written: at most once, whoever asks.

    The attempt is claimed first (a conditional create under `manifests/attempts/`), so two
    deliveries of one event, even at the same moment, start one run; a launch that fails gives
    the claim back so that the retry of that delivery can start it.
    """
    if not attempts.claim_launch(s3, settings.bucket, batch_id, attempt):
        logger.info("attempt already launched; skipped", extra={"batch_id": batch_id, "attempt": attempt})
        return Launch(batch_id, submitted=False)
    uri = manifest_uri(settings.bucket, batch_id)
    try:
        launch = launcher.launch(
            batch_id,
            step_arguments(uri, settings.warehouse_uri, settings.weights_uri, settings.variance_target,
                           settings.precision, settings.int8_model_uri),
            attempt=attempt,
        )
    except BaseException:
        attempts.release_launch(s3, settings.bucket, batch_id, attempt)
        raise
    attempts.note_run(s3, settings.bucket, batch_id, attempt, launch.run_id)
    return launch

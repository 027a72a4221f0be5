"""Self-healing: a failed run is launched again, then someone is told; lost work is swept up.

Three entry points, each safe to repeat (EventBridge and Scheduler deliver at least once):
`retry_failed_run` for an EMR step or EMR Serverless run that failed, `rerun` for a person
re-running an exhausted batch, and `reconcile` for the schedule.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from contract.layout import MANIFEST_PREFIX, REPORTS_DIR, manifest_key
from functions import attempts
from functions.attempts import RunFailure
from functions.batching import listing_manifest, manifest_uri, object_exists
from functions.launchers import Launcher, local_warehouse_dir
from functions.settings import Settings
from functions.trigger import launch_attempt, submit_manifest

logger = Logger(child=True)


class UnknownBatch(LookupError):
    """A re-run asked for a batch that has no manifest in this stack's bucket."""


@dataclass(frozen=True)
class RetryOutcome:
    """What a failure event led to: `relaunched`, `duplicate`, `exhausted` or `not-ours`."""

    batch_id: str
    action: str
    attempt: int
    alerted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "action": self.action, "attempt": self.attempt, "alerted": self.alerted}


def retry_failed_run(
    failure: RunFailure, settings: Settings, s3: Any, launcher: Launcher, sns: Any
) -> RetryOutcome:
    """Launch the next attempt of a failed batch, or tell the alert topic once attempts run out.

    The next attempt's number comes from the failed run's name, not from a count, so a
    redelivered event names the same attempt and finds it already claimed: no extra run.
    """
    if not manifest_exists(s3, settings.bucket, failure.batch_id):
        logger.info("failed run of another stack's batch; ignored", extra={"batch_id": failure.batch_id})
        return RetryOutcome(failure.batch_id, "not-ours", failure.attempt)
    attempts.record_failure(s3, settings.bucket, failure)
    if failure.attempt >= settings.max_attempts:
        alerted = alert_exhausted(failure.batch_id, settings, s3, sns)
        return RetryOutcome(failure.batch_id, "exhausted", failure.attempt, alerted)
    following = failure.attempt + 1
    launch = launch_attempt(failure.batch_id, settings, s3, launcher, following)
    return RetryOutcome(failure.batch_id, "relaunched" if launch.submitted else "duplicate", following)


def rerun(batch_id: str, settings: Settings, s3: Any, launcher: Launcher) -> RetryOutcome:
    """A person's re-run (the alert says how): one more attempt, whatever the limit."""
    if not manifest_exists(s3, settings.bucket, batch_id):
        raise UnknownBatch(f"no manifest {manifest_key(batch_id)} in s3://{settings.bucket}: nothing to re-run")
    attempt = attempts.history(s3, settings.bucket, batch_id).last + 1
    attempts.release_exhausted(s3, settings.bucket, batch_id)
    launch_attempt(batch_id, settings, s3, launcher, attempt)
    return RetryOutcome(batch_id, "relaunched", attempt)


def alert_exhausted(batch_id: str, settings: Settings, s3: Any, sns: Any,
                    found: attempts.AttemptHistory | None = None) -> bool:
    """One SNS message per exhausted batch; True if this call sent it.

    The claim (a conditional create) comes first so that concurrent duplicates send one message;
    a failed publish gives the claim back, so that the event's retry sends it. `found` is the
    batch's attempt history when the caller has just read it.
    """
    found = found or attempts.history(s3, settings.bucket, batch_id)
    if not attempts.claim_exhausted(s3, settings.bucket, batch_id, found.last):
        return False
    if settings.alert_topic_arn is None:
        logger.error("batch ran out of attempts and no alert topic is set", extra={"batch_id": batch_id})
        return False
    try:
        sns.publish(TopicArn=settings.alert_topic_arn, Subject=f"Verger batch {batch_id} failed"[:100],
                    Message=alert_message(batch_id, settings, found))
    except ClientError:
        attempts.release_exhausted(s3, settings.bucket, batch_id)
        raise
    logger.error("batch ran out of attempts; alert sent", extra={"batch_id": batch_id})
    return True


def alert_message(batch_id: str, settings: Settings, found: attempts.AttemptHistory) -> str:
    last = found.failures[-1] if found.failures else {}
    rerun_event = json.dumps({"action": "rerun", "batch_id": batch_id})
    return "\n".join([
        f"Verger batch {batch_id} failed {len(found.failures)} time(s) and will not be retried automatically.",
        f"Manifest: {manifest_uri(settings.bucket, batch_id)}",
        f"Attempts launched: {', '.join(map(str, found.launched)) or 'none recorded'}",
        f"Last error ({last.get('state', 'unknown')}, run {last.get('run_id', '?')}): {last.get('reason', 'unknown')}",
        "",
        "After fixing the cause, re-run it with:",
        f"  aws lambda invoke --function-name <stack>-trigger --cli-binary-format raw-in-base64-out "
        f"--payload '{rerun_event}' out.json",
        f"Attempt records: s3://{settings.bucket}/{attempts.batch_prefix(batch_id)}",
    ])


@dataclass
class Reconciliation:
    """What one reconcile pass found and did."""

    pending: list[str] = field(default_factory=list)
    relaunched: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    sweep_batch_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "relaunched": self.relaunched, "running": self.running,
                "exhausted": self.exhausted, "sweep_batch_id": self.sweep_batch_id}


def reconcile(
    settings: Settings, s3: Any, launcher: Launcher, sns: Any, scheduled_time: str | None,
    now: datetime | None = None,
) -> Reconciliation:
    """Relaunch every manifest older than the grace period with no report and no live run, then
    submit a sweep batch that finds photos whose notification was lost.

    `scheduled_time` (Scheduler's `<aws.scheduler.scheduled-time>`) is the sweep's nonce, so a
    schedule delivered twice submits one sweep; a person's manual reconcile (no scheduled time)
    gets the current second.
    """
    now = now or datetime.now(timezone.utc)
    scheduled_time = scheduled_time or now.isoformat(timespec="seconds")
    result = Reconciliation()
    done = reported_batches(s3, settings.warehouse_uri)
    result.pending = [batch_id for batch_id, written in manifests(s3, settings.bucket)
                      if batch_id not in done and now - written > timedelta(minutes=settings.reconcile_grace_minutes)]
    live = launcher.live_batches() if result.pending else set()
    for batch_id in result.pending:
        if batch_id in live:
            result.running.append(batch_id)
            continue
        found = attempts.history(s3, settings.bucket, batch_id)
        if found.exhausted:
            result.exhausted.append(batch_id)
        elif found.last >= settings.max_attempts:
            alert_exhausted(batch_id, settings, s3, sns, found)
            result.exhausted.append(batch_id)
        else:
            launch_attempt(batch_id, settings, s3, launcher, found.last + 1)
            result.relaunched.append(batch_id)
    sweep = listing_manifest("sweep", settings.bucket, scheduled_time)
    result.sweep_batch_id = submit_manifest(sweep, settings, s3, launcher).batch_id
    logger.info("reconciled", extra=result.as_dict())
    return result


def manifests(s3: Any, bucket: str) -> list[tuple[str, datetime]]:
    """(batch id, written at) of every manifest; attempt records and leases are in sub-folders."""
    found = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=MANIFEST_PREFIX, Delimiter="/"):
        for entry in page.get("Contents", []):
            name = entry["Key"][len(MANIFEST_PREFIX):]
            if name.endswith(".json"):
                found.append((name.removesuffix(".json"), entry["LastModified"]))
    return found


def reported_batches(s3: Any, warehouse_uri: str) -> set[str]:
    """Batch ids with a report in the warehouse (the job writes it after its commit); a local
    warehouse (the one-machine stack) is a directory."""
    if not warehouse_uri.startswith("s3://"):
        return {path.stem for path in (local_warehouse_dir(warehouse_uri) / REPORTS_DIR).glob("*.json")}
    bucket, prefix = reports_location(warehouse_uri)
    paginator = s3.get_paginator("list_objects_v2")
    return {
        entry["Key"][len(prefix):].removesuffix(".json")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for entry in page.get("Contents", [])
    }


def reports_location(warehouse_uri: str) -> tuple[str, str]:
    """(bucket, key prefix) of the reports under an `s3://` warehouse."""
    without_scheme = warehouse_uri.removeprefix("s3://").rstrip("/")
    bucket, _, path = without_scheme.partition("/")
    return bucket, f"{path}/{REPORTS_DIR}/" if path else f"{REPORTS_DIR}/"


def manifest_exists(s3: Any, bucket: str, batch_id: str) -> bool:
    return object_exists(s3, bucket, manifest_key(batch_id))

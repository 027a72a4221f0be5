"""The durable record of a batch's attempts, kept next to its manifest.

`manifests/attempts/<batch_id>/` holds `<n>.json` per launched attempt (created with
`If-None-Match: *` before the launch, so a duplicate event, concurrent or late, starts nothing),
`<n>-failed.json` per failed attempt (its state and last error), and `exhausted.json` once the
alert is sent. It lives under `manifests/` so it expires with the manifest it describes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from contract.layout import MANIFEST_PREFIX
from functions.batching import put_if_absent

ATTEMPTS_PREFIX = f"{MANIFEST_PREFIX}attempts/"
EXHAUSTED = "exhausted.json"
_LAUNCHED = re.compile(r"^(?P<n>[0-9]+)\.json$")
_FAILED = re.compile(r"^(?P<n>[0-9]+)-failed\.json$")


@dataclass(frozen=True)
class RunFailure:
    """One failed run of a batch, as an EMR or EMR Serverless event reports it."""

    batch_id: str
    attempt: int
    run_id: str
    state: str
    reason: str


@dataclass(frozen=True)
class AttemptHistory:
    """What the bucket knows about a batch's attempts."""

    launched: tuple[int, ...]
    failures: tuple[dict[str, Any], ...]
    exhausted: bool

    @property
    def last(self) -> int:
        return max(self.launched, default=0)


def batch_prefix(batch_id: str) -> str:
    return f"{ATTEMPTS_PREFIX}{batch_id}/"


def claim_launch(s3: Any, bucket: str, batch_id: str, attempt: int) -> bool:
    """Claim attempt `attempt`; False if it was claimed already (a duplicate request)."""
    return put_if_absent(s3, bucket, _launch_key(batch_id, attempt), _launch_body(batch_id, attempt, None))


def note_run(s3: Any, bucket: str, batch_id: str, attempt: int, run_id: str | None) -> None:
    """Add the started run's id (step or job run) to the claimed attempt."""
    s3.put_object(Bucket=bucket, Key=_launch_key(batch_id, attempt),
                  Body=_launch_body(batch_id, attempt, run_id), ContentType="application/json")


def release_launch(s3: Any, bucket: str, batch_id: str, attempt: int) -> None:
    s3.delete_object(Bucket=bucket, Key=_launch_key(batch_id, attempt))


def _launch_key(batch_id: str, attempt: int) -> str:
    return f"{batch_prefix(batch_id)}{attempt}.json"


def _launch_body(batch_id: str, attempt: int, run_id: str | None) -> bytes:
    return json.dumps({"batch_id": batch_id, "attempt": attempt, "run_id": run_id, "at": _now()}).encode()


def record_failure(s3: Any, bucket: str, failure: RunFailure) -> None:
    """Keep the failure's state and message (a redelivered event rewrites the same content)."""
    body = {"batch_id": failure.batch_id, "attempt": failure.attempt, "run_id": failure.run_id,
            "state": failure.state, "reason": failure.reason, "recorded_at": _now()}
    s3.put_object(Bucket=bucket, Key=f"{batch_prefix(failure.batch_id)}{failure.attempt}-failed.json",
                  Body=json.dumps(body).encode(), ContentType="application/json")


def history(s3: Any, bucket: str, batch_id: str) -> AttemptHistory:
    launched: list[int] = []
    failures: list[dict[str, Any]] = []
    exhausted = False
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=batch_prefix(batch_id)):
        for entry in page.get("Contents", []):
            name = entry["Key"].rsplit("/", 1)[-1]
            if match := _LAUNCHED.match(name):
                launched.append(int(match["n"]))
            elif _FAILED.match(name):
                failures.append(json.loads(s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()))
            elif name == EXHAUSTED:
                exhausted = True
    failures.sort(key=lambda failure: int(failure.get("attempt", 0)))
    return AttemptHistory(tuple(sorted(launched)), tuple(failures), exhausted)


def claim_exhausted(s3: Any, bucket: str, batch_id: str, attempts: int) -> bool:
    """True for the one caller that gets to send the alert for this batch."""
    body = {"batch_id": batch_id, "attempts": attempts, "exhausted_at": _now()}
    return put_if_absent(s3, bucket, f"{batch_prefix(batch_id)}{EXHAUSTED}", json.dumps(body).encode())


def release_exhausted(s3: Any, bucket: str, batch_id: str) -> None:
    """Forget the alert: after a failed publish (so a retry sends it) or a manual re-run."""
    s3.delete_object(Bucket=bucket, Key=f"{batch_prefix(batch_id)}{EXHAUSTED}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

"""EventBridge's EMR events about a run that ended badly, turned into a `RunFailure`.

The rules in template.yaml already select the states; the checks here keep a hand-sent or
mis-routed event from starting anything, and a run that is not Verger's is ignored by name.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.attempts import RunFailure
from functions.launchers import parse_run_name

FAILED_STEP_STATES = ("FAILED", "CANCELLED", "INTERRUPTED")
FAILED_JOB_RUN_STATES = ("FAILED", "CANCELLED")


class MalformedEvent(ValueError):
    """An EMR event lacking a field AWS documents; the message names it."""


def failure_from_step_event(event: Mapping[str, Any]) -> RunFailure | None:
    """The failed attempt an "EMR Step Status Change" reports; None for other states or steps."""
    detail = _detail(event, ("name", "stepId", "state", "clusterId"))
    found = parse_run_name(detail["name"])
    if detail["state"] not in FAILED_STEP_STATES or found is None:
        return None
    batch_id, attempt = found
    reason = str(detail.get("message") or f"step {detail['stepId']} on {detail['clusterId']} ended {detail['state']}")
    return RunFailure(batch_id, attempt, str(detail["stepId"]), str(detail["state"]), reason)


def failure_from_job_run_event(
    event: Mapping[str, Any], emr_serverless: Any, application_id: str | None
) -> RunFailure | None:
    """The failed attempt an "EMR Serverless Job Run State Change" reports.

    The event carries no run name, so the run is read (GetJobRun) for its name and its
    `stateDetails`, the error a person needs. Runs of other applications are ignored.
    """
    detail = _detail(event, ("jobRunId", "applicationId", "state"))
    if detail["state"] not in FAILED_JOB_RUN_STATES or detail["applicationId"] != application_id:
        return None
    run = emr_serverless.get_job_run(applicationId=detail["applicationId"], jobRunId=detail["jobRunId"])["jobRun"]
    found = parse_run_name(str(run.get("name") or ""))
    if found is None:
        return None
    batch_id, attempt = found
    reason = str(run.get("stateDetails") or f"job run {detail['jobRunId']} ended {detail['state']}")
    return RunFailure(batch_id, attempt, str(detail["jobRunId"]), str(detail["state"]), reason)


def _detail(event: Mapping[str, Any], fields: tuple[str, ...]) -> Mapping[str, Any]:
    detail = event.get("detail")
    if not isinstance(detail, Mapping):
        raise MalformedEvent(f"{event.get('detail-type')!r} event has no detail object")
    missing = [name for name in fields if not detail.get(name)]
    if missing:
        raise MalformedEvent(f"{event.get('detail-type')!r} event lacks detail.{', detail.'.join(missing)}")
    return detail

"""Lambda entry point (`functions.app.handler`): wiring only; the work is in `functions.trigger`."""
from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import clients, recovery, telemetry, trigger
from functions.events import EventKind, event_kind
from functions.launchers import EmrStepLauncher, launcher_for
from functions.run_events import failure_from_job_run_event, failure_from_step_event
from functions.settings import Settings, load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch → partial batch response; anything else → a summary of what was done."""
    kind = event_kind(event)
    settings = load_settings(os.environ)
    s3 = clients.client("s3")
    launcher = launcher_for(settings, clients.client)
    if kind in (EventKind.EMR_STEP_CHANGE, EventKind.SERVERLESS_RUN_CHANGE, EventKind.RERUN, EventKind.RECONCILE):
        return recover(kind, event, settings, s3, launcher)
    if kind is EventKind.START_CLUSTER:
        return start_cluster(launcher)
    if kind is EventKind.FULL_RECOMPUTE:
        return submitted(trigger.full_recompute(settings, s3, launcher))
    if kind is EventKind.MAINTAIN:
        return submitted(trigger.maintain(settings, s3, launcher, event.get("scheduled_time")))
    if kind is EventKind.S3:
        outcome = trigger.process_s3_event(event, settings, s3, launcher)
        telemetry.publish_outcome(metrics, outcome)
        outcome.raise_for_failures()
        return outcome.summary()
    outcome = trigger.process_sqs_records(event["Records"], settings, s3, launcher)
    telemetry.publish_outcome(metrics, outcome)
    return process_partial_response(
        event=event, record_handler=outcome.settle, processor=processor, context=context
    )


def submitted(submission: trigger.Submission) -> dict[str, Any]:
    telemetry.publish_submissions(metrics, [submission])
    return submission.as_dict()


def recover(kind: EventKind, event: dict[str, Any], settings: Settings, s3: Any, launcher: Any) -> dict[str, Any]:
    """Failed runs, re-runs and the reconcile schedule (see `functions.recovery`)."""
    sns = clients.client("sns")
    if kind is EventKind.RECONCILE:
        result = recovery.reconcile(settings, s3, launcher, sns, event.get("scheduled_time"))
        telemetry.publish_reconciliation(metrics, result)
        return result.as_dict()
    if kind is EventKind.RERUN:
        return recovery.rerun(str(event.get("batch_id") or ""), settings, s3, launcher).as_dict()
    failure = (
        failure_from_step_event(event)
        if kind is EventKind.EMR_STEP_CHANGE
        else failure_from_job_run_event(event, clients.client("emr-serverless"), settings.emr_application_id)
    )
    if failure is None:
        return {"action": "ignored"}
    outcome = recovery.retry_failed_run(failure, settings, s3, launcher, sns)
    telemetry.publish_retry(metrics, outcome)
    return outcome.as_dict()


def start_cluster(launcher: Any) -> dict[str, Any]:
    """The stack's cluster, created now if none lives (for the notebook server, before any photo
    arrives); it ends itself when idle like any other."""
    if not isinstance(launcher, EmrStepLauncher):
        raise ValueError("start-cluster needs Launcher=emr: EMR Serverless and local runs have no cluster")
    return {"action": "start-cluster", "cluster_id": launcher.clusters()}

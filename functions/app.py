"""Lambda entry point (`functions.app.handler`): wiring only; the work is in `functions.trigger`."""
from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import clients, telemetry, trigger
from functions.events import EventKind, event_kind
from functions.launchers import launcher_for
from functions.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch → partial batch response; plain S3 event or full recompute → a summary."""
    kind = event_kind(event)
    settings = load_settings(os.environ)
    s3 = clients.client("s3")
    launcher = launcher_for(settings, clients.client)
    if kind is EventKind.FULL_RECOMPUTE:
        submission = trigger.full_recompute(settings, s3, launcher)
        telemetry.publish_submissions(metrics, [submission])
        return submission.as_dict()
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

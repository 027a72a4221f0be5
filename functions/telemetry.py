"""One metric per outcome, so a dashboard shows where every record went."""
from __future__ import annotations

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from functions.recovery import Reconciliation, RetryOutcome
from functions.trigger import BatchOutcome, Submission


def publish_outcome(metrics: Metrics, outcome: BatchOutcome) -> None:
    """Counts for a batch; drops carry a `Reason` dimension, hence one single metric per reason."""
    metrics.add_metric(name="RecordsReceived", unit=MetricUnit.Count, value=outcome.records)
    metrics.add_metric(name="ImagesAccepted", unit=MetricUnit.Count, value=outcome.accepted_images)
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=len(outcome.failures))
    publish_submissions(metrics, outcome.submissions)
    for reason, count in sorted(outcome.dropped.items()):
        with single_metric(
            name="RecordsDropped",
            unit=MetricUnit.Count,
            value=count,
            default_dimensions=metrics.default_dimensions,
        ) as metric:
            metric.add_dimension(name="Reason", value=reason.value)


def publish_submissions(metrics: Metrics, submissions: list[Submission]) -> None:
    created = sum(submission.manifest_created for submission in submissions)
    submitted = sum(submission.launch.submitted for submission in submissions)
    metrics.add_metric(name="ManifestsWritten", unit=MetricUnit.Count, value=created)
    metrics.add_metric(name="StepsSubmitted", unit=MetricUnit.Count, value=submitted)
    metrics.add_metric(
        name="DuplicateSubmissionsSkipped", unit=MetricUnit.Count, value=len(submissions) - submitted
    )


def publish_retry(metrics: Metrics, outcome: RetryOutcome) -> None:
    """`RunsFailed` per failure event; `BatchesExhausted` feeds the alarm of the same name."""
    metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=int(outcome.action != "not-ours"))
    metrics.add_metric(name="RunsRelaunched", unit=MetricUnit.Count, value=int(outcome.action == "relaunched"))
    metrics.add_metric(name="BatchesExhausted", unit=MetricUnit.Count, value=int(outcome.alerted))


def publish_reconciliation(metrics: Metrics, result: Reconciliation) -> None:
    metrics.add_metric(name="BatchesPending", unit=MetricUnit.Count, value=len(result.pending))
    metrics.add_metric(name="RunsRelaunched", unit=MetricUnit.Count, value=len(result.relaunched))
    metrics.add_metric(name="SweepsSubmitted", unit=MetricUnit.Count, value=int(result.sweep_batch_id is not None))

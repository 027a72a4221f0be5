"""Fault injection on the trigger: failed runs run again, then one alert; reconciliation and sweep.

EMR, EMR Serverless, S3 and SNS are moto; the EMR and Scheduler events are those of events/,
shaped as AWS documents them. A "photo" here is a manifest item: the job's side (storing it once)
is proven by the job's own tests; these prove that every photo gets a run, once per attempt.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from contract.manifest import parse_manifest
from functions import attempts, clients, recovery
from functions.app import handler
from functions.cluster import find_live_cluster
from functions.launchers import launcher_for
from functions.settings import load_settings

BUCKET = "verger-photos-example"
TOPIC = "verger-alerts"  # conftest's ALERT_TOPIC_ARN names it


@pytest.fixture
def alerts(own_cluster_env) -> Any:
    """The alert topic, with a queue subscribed to it so that a test can count its messages."""
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=TOPIC)["TopicArn"]
    assert topic == own_cluster_env["VERGER_ALERT_TOPIC_ARN"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)

    def received() -> list[str]:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"])["Message"] for m in messages]

    return received


def upload_and_submit(lambda_context, load_event) -> str:
    """events/s3-put.json's photo uploaded and submitted; returns its batch id."""
    event = load_event("s3-put.json")
    key = event["Records"][0]["s3"]["object"]["key"]
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=b"jpeg")
    return handler(event, lambda_context)["batches"][0]["batch_id"]


def steps(own_cluster_env) -> list[dict[str, Any]]:
    emr = boto3.client("emr")
    cluster_id = find_live_cluster(emr, own_cluster_env["VERGER_CLUSTER_NAME"])
    return list(reversed(emr.list_steps(ClusterId=cluster_id)["Steps"]))  # oldest first


def step_failed(load_event, step: dict[str, Any], state: str = "FAILED") -> dict[str, Any]:
    event = copy.deepcopy(load_event("emr-step-failed.json"))
    event["detail"].update(name=step["Name"], stepId=step["Id"], state=state)
    return event


def test_a_step_that_fails_once_is_launched_again_and_its_photo_is_submitted_once_more(
    own_cluster_env, alerts, lambda_context, load_event
):
    # GIVEN a photo whose first step failed (Spot loss, out of memory...)
    batch_id = upload_and_submit(lambda_context, load_event)
    [first] = steps(own_cluster_env)

    # WHEN EMR reports the failure
    outcome = handler(step_failed(load_event, first), lambda_context)

    # THEN attempt 2 of the same manifest is on the cluster, and nobody is alerted
    second = steps(own_cluster_env)[1]
    assert outcome == {"batch_id": batch_id, "action": "relaunched", "attempt": 2, "alerted": False}
    assert second["Name"] == f"verger-{batch_id}-attempt-2"
    assert second["Config"]["Args"] == first["Config"]["Args"]
    assert alerts() == []


def test_a_failed_int8_step_is_launched_again_with_its_precision_and_model(
    own_cluster_env, alerts, lambda_context, load_event, monkeypatch
):
    # GIVEN a stack deployed at int8, and a photo whose first step failed
    model = f"s3://{BUCKET}/models/int8-0a1b2c3d4e5f"
    monkeypatch.setenv("VERGER_PRECISION", "int8")
    monkeypatch.setenv("VERGER_INT8_MODEL_URI", model)
    upload_and_submit(lambda_context, load_event)
    [first] = steps(own_cluster_env)

    # WHEN EMR reports the failure
    handler(step_failed(load_event, first), lambda_context)

    # THEN attempt 2 runs at int8 with the same model, like the first
    second = steps(own_cluster_env)[1]
    assert second["Config"]["Args"][-4:] == ["--precision", "int8", "--int8-model", model]
    assert second["Config"]["Args"] == first["Config"]["Args"]


@pytest.mark.parametrize("state", ["FAILED", "CANCELLED", "INTERRUPTED"])
def test_a_duplicate_eventbridge_event_adds_no_attempt(own_cluster_env, alerts, lambda_context, load_event, state):
    # GIVEN a failed first step, already relaunched once
    upload_and_submit(lambda_context, load_event)
    [first] = steps(own_cluster_env)
    handler(step_failed(load_event, first, state), lambda_context)

    # WHEN EventBridge delivers the same event again
    outcome = handler(step_failed(load_event, first, state), lambda_context)

    # THEN no step is added
    assert outcome["action"] == "duplicate"
    assert len(steps(own_cluster_env)) == 2


def test_a_step_that_always_fails_runs_exactly_max_attempts_times_and_alerts_once(
    own_cluster_env, alerts, lambda_context, load_event
):
    # GIVEN a batch whose every step fails, and MaxAttempts = 3 (the template's default)
    batch_id = upload_and_submit(lambda_context, load_event)

    # WHEN every failure is reported, each twice (EventBridge delivers at least once)
    outcomes = []
    for _ in range(5):
        last = steps(own_cluster_env)[-1]
        outcomes += [handler(step_failed(load_event, last), lambda_context) for _ in range(2)]

    # THEN exactly three steps ran and the topic got one message naming batch, manifest, error and re-run
    assert [s["Name"] for s in steps(own_cluster_env)] == [f"verger-{batch_id}-attempt-{n}" for n in (1, 2, 3)]
    assert sum(outcome["alerted"] for outcome in outcomes) == 1
    [message] = alerts()
    assert batch_id in message
    assert f"s3://{BUCKET}/manifests/{batch_id}.json" in message
    assert "failed at 2026-11-23" in message  # the last error, from the event
    assert json.dumps({"action": "rerun", "batch_id": batch_id}) in message


def test_a_failed_publish_gives_the_alert_back_so_the_retried_event_sends_it(
    own_cluster_env, alerts, lambda_context, load_event, monkeypatch
):
    # GIVEN MaxAttempts = 1 and SNS failing once
    monkeypatch.setenv("VERGER_MAX_ATTEMPTS", "1")
    upload_and_submit(lambda_context, load_event)
    [first] = steps(own_cluster_env)
    sns = clients.client("sns")
    publish = sns.publish
    calls = []

    def flaky(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) == 1:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "try again"}}, "Publish")
        return publish(**kwargs)

    monkeypatch.setattr(sns, "publish", flaky)

    # WHEN the failure event fails the invocation, and Lambda's async retry delivers it again
    with pytest.raises(ClientError):
        handler(step_failed(load_event, first), lambda_context)
    handler(step_failed(load_event, first), lambda_context)

    # THEN exactly one message went out
    assert len(alerts()) == 1


def test_a_failed_step_of_another_stack_is_ignored(own_cluster_env, alerts, lambda_context, load_event):
    # GIVEN a Verger-named step whose manifest is not in this stack's bucket
    event = load_event("emr-step-failed.json")
    # WHEN / THEN nothing is launched and nobody is told
    assert handler(event, lambda_context)["action"] == "not-ours"
    assert alerts() == []


def test_a_person_reruns_an_exhausted_batch_with_the_event_the_alert_gives(
    own_cluster_env, alerts, lambda_context, load_event, monkeypatch
):
    # GIVEN a batch that ran out of its single attempt
    monkeypatch.setenv("VERGER_MAX_ATTEMPTS", "1")
    batch_id = upload_and_submit(lambda_context, load_event)
    handler(step_failed(load_event, steps(own_cluster_env)[0]), lambda_context)

    # WHEN the re-run event is sent, and this attempt fails too
    outcome = handler({"action": "rerun", "batch_id": batch_id}, lambda_context)
    handler(step_failed(load_event, steps(own_cluster_env)[-1]), lambda_context)

    # THEN attempt 2 ran, and its failure was told again (the re-run cleared the first alert)
    assert outcome["attempt"] == 2
    assert len(alerts()) == 2


def test_a_failed_serverless_run_is_read_for_its_name_and_launched_again(
    own_cluster_env, alerts, lambda_context, load_event, monkeypatch
):
    # GIVEN the Serverless flavour and a batch whose first run failed
    emr_serverless = boto3.client("emr-serverless")
    application = emr_serverless.create_application(name="verger", releaseLabel="emr-7.13.0", type="SPARK")["applicationId"]
    for name, value in {"VERGER_LAUNCHER": "emr-serverless", "VERGER_EMR_APPLICATION_ID": application,
                        "VERGER_EMR_JOB_ROLE_ARN": "arn:aws:iam::123456789012:role/job"}.items():
        monkeypatch.setenv(name, value)
    batch_id = upload_and_submit(lambda_context, load_event)
    [run] = emr_serverless.list_job_runs(applicationId=application)["jobRuns"]
    event = load_event("serverless-job-run-failed.json")
    event["detail"].update(applicationId=application, jobRunId=run["id"])

    # WHEN the failure event arrives, twice
    outcomes = [handler(event, lambda_context) for _ in range(2)]

    # THEN one second attempt was started, named after the batch and the attempt
    names = sorted(r["name"] for r in emr_serverless.list_job_runs(applicationId=application)["jobRuns"])
    assert names == [f"verger-{batch_id}-attempt-1", f"verger-{batch_id}-attempt-2"]
    assert [o["action"] for o in outcomes] == ["relaunched", "duplicate"]


def test_reconcile_relaunches_a_stale_manifest_without_report_or_live_run_and_submits_one_sweep(
    own_cluster_env, alerts, lambda_context, load_event
):
    # GIVEN a batch whose step was lost with its cluster (no report, no live step, event lost too)
    batch_id = upload_and_submit(lambda_context, load_event)
    emr = boto3.client("emr")
    emr.terminate_job_flows(JobFlowIds=[find_live_cluster(emr, own_cluster_env["VERGER_CLUSTER_NAME"])])
    settings, s3 = load_settings(own_cluster_env), boto3.client("s3")
    launcher = launcher_for(settings, clients.client, own_cluster_env)
    later = datetime.now(timezone.utc) + timedelta(minutes=settings.reconcile_grace_minutes + 1)

    # WHEN the schedule fires, and Scheduler delivers the same invocation twice
    schedule = load_event("scheduled-reconcile.json")
    results = [recovery.reconcile(settings, s3, launcher, clients.client("sns"), schedule["scheduled_time"], later)
               for _ in range(2)]

    # THEN the batch runs again as attempt 2 on a new cluster, once, and one sweep batch is submitted
    assert results[0].relaunched == [batch_id] and results[1].relaunched == []
    names = [s["Name"] for s in steps(own_cluster_env)]
    sweep_id = results[0].sweep_batch_id
    assert results[1].sweep_batch_id == sweep_id
    assert sorted(names) == sorted([f"verger-{batch_id}-attempt-2", f"verger-{sweep_id}-attempt-1"])
    sweep = parse_manifest(s3.get_object(Bucket=BUCKET, Key=f"manifests/{sweep_id}.json")["Body"].read())
    assert (sweep.mode, sweep.items, sweep.nonce, sweep.source) == ("sweep", (), "2026-11-23T18:00:00Z", f"s3://{BUCKET}")


def test_reconcile_leaves_reported_young_and_running_batches_alone(own_cluster_env, lambda_context, load_event, alerts):
    # GIVEN a reported batch, and a batch whose step is still pending on the live cluster
    done = upload_and_submit(lambda_context, load_event)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key=f"warehouse/reports/{done}.json", Body=b"{}")
    event = load_event("s3-put.json")
    event["Records"][0]["s3"]["object"].update(key="raw/Kiwi/2.jpg", eTag="1" * 32)
    running = handler(event, lambda_context)["batches"][0]["batch_id"]
    settings = load_settings(own_cluster_env)
    launcher = launcher_for(settings, clients.client, own_cluster_env)
    later = datetime.now(timezone.utc) + timedelta(days=1)

    # WHEN reconciliation runs (a day later) and right now
    late = recovery.reconcile(settings, s3, launcher, clients.client("sns"), "2026-11-23T18:00:00Z", later)
    early = recovery.reconcile(settings, s3, launcher, clients.client("sns"), "2026-11-23T18:00:00Z")

    # THEN nothing is relaunched: the reported one is done, the other still runs; a young one waits
    assert (late.pending, late.running, late.relaunched) == ([running], [running], [])
    assert early.pending == []


def test_reconcile_tells_the_topic_once_about_a_stale_batch_out_of_attempts(
    own_cluster_env, alerts, lambda_context, load_event, monkeypatch
):
    # GIVEN a batch with its single attempt launched and lost
    monkeypatch.setenv("VERGER_MAX_ATTEMPTS", "1")
    batch_id = upload_and_submit(lambda_context, load_event)
    emr = boto3.client("emr")
    emr.terminate_job_flows(JobFlowIds=[find_live_cluster(emr, own_cluster_env["VERGER_CLUSTER_NAME"])])
    settings, s3 = load_settings(dict(__import__("os").environ)), boto3.client("s3")
    launcher = launcher_for(settings, clients.client, own_cluster_env)
    later = datetime.now(timezone.utc) + timedelta(days=1)

    # WHEN reconciliation runs twice
    for scheduled in ("2026-11-23T18:00:00Z", "2026-11-24T00:00:00Z"):
        recovery.reconcile(settings, s3, launcher, clients.client("sns"), scheduled, later)

    # THEN one alert names the batch, and its attempt history says so
    [message] = alerts()
    assert batch_id in message
    assert attempts.history(s3, BUCKET, batch_id).exhausted


def test_a_manual_reconcile_without_a_scheduled_time_still_sweeps_each_time(
    own_cluster_env, alerts, lambda_context, monkeypatch
):
    import functions.recovery as recovery

    # GIVEN a person's {"action": "reconcile"} (no scheduled time), sent twice two seconds apart
    first = handler({"action": "reconcile"}, lambda_context)
    later = datetime.now(timezone.utc) + timedelta(seconds=2)

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(recovery, "datetime", Later)
    second = handler({"action": "reconcile"}, lambda_context)

    # THEN each gets its own sweep (a constant nonce would make every later sweep a duplicate)
    assert first["sweep_batch_id"] != second["sweep_batch_id"]

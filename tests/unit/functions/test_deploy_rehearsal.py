"""Deploy rehearsal: template.yaml through aws-sam-translator into moto's CloudFormation, then the
trigger run against what the stack created (its bucket, queue, topic, rule, roles, security
configuration and the function's own environment), with the faults of issue 11 injected."""
from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest

from functions.app import handler
from functions.cluster import find_live_cluster
from functions.settings import load_settings
from verger.embedded import complete_notifications, notification_configuration, sqs_event
from verger.rehearsal import MOTO_CANNOT_CREATE, deploy

BUCKET = "verger-rehearsal"
STACK = "verger"


@pytest.fixture
def stack(aws, monkeypatch) -> dict[str, Any]:
    """The stack as moto created it, with the function's environment set as Lambda sets it."""
    with complete_notifications():
        deployed = deploy(STACK, BUCKET)
        s3 = boto3.client("s3")
        if not s3.get_bucket_notification_configuration(Bucket=BUCKET).get("QueueConfigurations"):
            # moto's CloudFormation does not apply a bucket's NotificationConfiguration: apply the
            # translated template's own configuration, as CloudFormation would
            properties = deployed["template"]["Resources"]["Bucket"]["Properties"]["NotificationConfiguration"]
            queue_arn = boto3.client("sqs").get_queue_attributes(
                QueueUrl=deployed["outputs"]["UploadQueueUrl"], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            rules = [{**rule, "Queue": queue_arn} for rule in properties["QueueConfigurations"]]
            s3.put_bucket_notification_configuration(
                Bucket=BUCKET, NotificationConfiguration=notification_configuration({"QueueConfigurations": rules}))
        # The tests play the event source mapping (moto's would run the function in Docker).
        lambda_client = boto3.client("lambda")
        for mapping in lambda_client.list_event_source_mappings(FunctionName=f"{STACK}-trigger")["EventSourceMappings"]:
            lambda_client.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
        for name, value in deployed["environment"].items():
            monkeypatch.setenv(name, value)
        yield deployed


def deliver_uploads(stack: dict[str, Any], lambda_context) -> dict[str, Any]:
    """What the event source mapping does: the queue's messages, as one SQS event, to the handler."""
    sqs = boto3.client("sqs")
    queue = stack["outputs"]["UploadQueueUrl"]
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages", [])
    assert messages, "the stack's bucket did not notify the stack's queue"
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return handler(sqs_event(messages, arn), lambda_context)


def alert_inbox(stack: dict[str, Any]):
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=stack["outputs"]["AlertTopicArn"], Protocol="sqs", Endpoint=arn)
    return lambda: [json.loads(m["Body"])["Message"]
                    for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])]


def test_the_stack_reaches_create_complete_with_every_resource_moto_can_create(stack):
    # THEN CloudFormation (moto) completed the stack, and only the listed types were left to unit tests
    assert stack["status"] == "CREATE_COMPLETE"
    declared = {r["Type"] for r in stack["template"]["Resources"].values() if "Condition" not in r
                or r["Condition"] in ("OwnCluster", "UseEmr")}
    created = set(stack["types"].values())
    assert declared - created <= set(MOTO_CANNOT_CREATE)
    assert {"AWS::EMR::SecurityConfiguration", "AWS::SNS::Topic", "AWS::Events::Rule", "AWS::KMS::Key",
            "AWS::Lambda::EventSourceMapping", "AWS::CloudWatch::Dashboard"} <= created


def test_first_upload_creates_the_cluster_with_the_stack_security_configuration(stack, lambda_context):
    # GIVEN the default deployment and no cluster
    # WHEN a photo is uploaded to the stack's bucket and the queue delivers its notification
    boto3.client("s3").put_object(Bucket=BUCKET, Key="raw/Kiwi/1.jpg", Body=b"jpeg")
    response = deliver_uploads(stack, lambda_context)

    # THEN the stack's cluster exists, built with the stack's roles and security configuration
    emr = boto3.client("emr")
    cluster_id = find_live_cluster(emr, stack["outputs"]["ClusterName"])
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert response == {"batchItemFailures": []}
    assert cluster["SecurityConfiguration"] == stack["resources"]["ClusterSecurityConfiguration"]
    assert cluster["ServiceRole"] == stack["resources"]["EmrServiceRole"]
    assert cluster["VisibleToAllUsers"] is False
    # (moto keeps the configuration as Python's repr of the object, so it is read as text)
    security = emr.describe_security_configuration(Name=cluster["SecurityConfiguration"])["SecurityConfiguration"]
    assert "'MinimumInstanceMetadataServiceVersion': 2" in security and "'EnableInTransitEncryption': True" in security
    [step] = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert step["Name"].endswith("-attempt-1")


def test_the_stack_rule_selects_failed_verger_steps_only(stack, load_event):
    from moto.events.models import EventPattern

    rule = boto3.client("events").describe_rule(Name=stack["resources"]["FailedStepRule"])
    pattern = EventPattern.load(rule["EventPattern"])
    failed = load_event("emr-step-failed.json")
    completed = copy.deepcopy(failed)
    completed["detail"]["state"] = "COMPLETED"
    someone_else = copy.deepcopy(failed)
    someone_else["detail"]["name"] = "CustomJAR"
    assert [pattern.matches_event(e) for e in (failed, completed, someone_else)] == [True, False, False]


def test_a_step_that_always_fails_runs_three_times_and_tells_the_stack_topic_once(stack, lambda_context, load_event):
    # GIVEN an uploaded photo, its batch submitted, and a subscriber on the stack's topic
    inbox = alert_inbox(stack)
    boto3.client("s3").put_object(Bucket=BUCKET, Key="raw/Kiwi/1.jpg", Body=b"jpeg")
    deliver_uploads(stack, lambda_context)
    emr = boto3.client("emr")
    cluster_id = find_live_cluster(emr, stack["outputs"]["ClusterName"])

    # WHEN every step fails and each failure is delivered twice
    for _ in range(4):
        latest = emr.list_steps(ClusterId=cluster_id)["Steps"][0]
        event = load_event("emr-step-failed.json")
        event["detail"].update(name=latest["Name"], stepId=latest["Id"], clusterId=cluster_id)
        for _ in range(2):
            handler(copy.deepcopy(event), lambda_context)

    # THEN MaxAttempts (3) steps ran and the topic received one message
    assert len(emr.list_steps(ClusterId=cluster_id)["Steps"]) == 3
    assert len(inbox()) == 1


def scheduled_payload(stack: dict[str, Any], action: str, scheduled_time: str) -> dict[str, Any]:
    """The input of the Scheduler schedule SAM made for `action`, with Scheduler's context attribute
    filled in as it does."""
    inputs = [r["Properties"]["Target"]["Input"] for r in stack["template"]["Resources"].values()
              if r["Type"] == "AWS::Scheduler::Schedule"]
    (payload,) = [text for text in inputs if json.loads(text)["action"] == action]
    return json.loads(payload.replace("<aws.scheduler.scheduled-time>", scheduled_time))


def test_the_stack_schedule_input_reconciles_and_submits_one_sweep(stack, lambda_context):
    # GIVEN the reconcile schedule's input
    payload = scheduled_payload(stack, "reconcile", "2026-11-23T18:00:00Z")

    # WHEN it is delivered twice
    results = [handler(copy.deepcopy(payload), lambda_context) for _ in range(2)]

    # THEN one sweep batch, with its manifest in the stack's bucket
    assert results[0]["sweep_batch_id"] == results[1]["sweep_batch_id"]
    manifest = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"manifests/{results[0]['sweep_batch_id']}.json")
    assert json.loads(manifest["Body"].read())["mode"] == "sweep"


def test_with_the_notebook_option_the_stack_creates_its_policies_and_start_cluster_builds_jupyterhub(
        aws, monkeypatch, lambda_context):
    # GIVEN the stack deployed with NotebookServer=jupyterhub
    deployed = deploy(STACK, BUCKET, {"NotebookServer": "jupyterhub"})
    assert deployed["status"] == "CREATE_COMPLETE"
    for name, value in deployed["environment"].items():
        monkeypatch.setenv(name, value)
    # THEN the users' policy exists (port forwarding only) and the nodes' role carries the SSM permissions
    iam = boto3.client("iam")
    user_policy = iam.get_policy(PolicyArn=deployed["outputs"]["NotebookUserPolicyArn"])["Policy"]
    version = iam.get_policy_version(PolicyArn=user_policy["Arn"], VersionId=user_policy["DefaultVersionId"])
    # (moto may keep a document as Python's repr of the object, so it is read as text)
    document = str(version["PolicyVersion"]["Document"])
    assert "ForwardToTheStackClusterNodesOnly" in document and "AWS-StartPortForwardingSession" in document
    role = deployed["resources"]["EmrInstanceRole"]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    node_document = str(iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"])
    assert "OpenSessionManagerChannels" in node_document and "StoreTheNotebookLogin" in node_document

    # WHEN someone asks the trigger for the cluster before any photo arrived
    result = handler({"action": "start-cluster"}, lambda_context)

    # THEN the cluster it creates runs JupyterHub, and its first step replaces the default login
    emr = boto3.client("emr")
    cluster = emr.describe_cluster(ClusterId=result["cluster_id"])["Cluster"]
    assert {"JupyterHub", "Livy", "Spark"} <= {a["Name"] for a in cluster["Applications"]}
    assert [s["Name"] for s in emr.list_steps(ClusterId=result["cluster_id"])["Steps"]] == ["notebook-login"]


def test_a_stack_deployed_at_int8_hands_the_trigger_the_precision_and_the_staged_model(aws):
    # GIVEN the stack deployed with Precision=int8 and the folder bootstrap.stage printed
    deployed = deploy(STACK, BUCKET, {"Precision": "int8", "Int8ModelName": "int8-0a1b2c3d4e5f"})
    assert deployed["status"] == "CREATE_COMPLETE"

    # THEN the function's environment names both, and the trigger's settings take them for the job
    environment = deployed["environment"]
    assert environment["VERGER_PRECISION"] == "int8"
    assert environment["VERGER_INT8_MODEL_URI"] == f"s3://{BUCKET}/models/int8-0a1b2c3d4e5f"
    settings = load_settings({name: str(value) for name, value in environment.items()})  # as Lambda sets them
    assert (settings.precision, settings.int8_model_uri) == ("int8", environment["VERGER_INT8_MODEL_URI"])


def test_the_default_stack_runs_fp32_without_an_int8_model(stack):
    assert stack["environment"]["VERGER_PRECISION"] == "fp32"
    assert stack["environment"]["VERGER_INT8_MODEL_URI"] == ""


def test_without_the_option_the_nodes_get_no_session_manager_permission(stack):
    iam = boto3.client("iam")
    role = stack["resources"]["EmrInstanceRole"]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    node_document = str(iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"])
    assert "UploadClusterLogs" in node_document
    assert "ssmmessages" not in node_document and "ssm:" not in node_document
    assert "NotebookUserPolicyArn" not in stack["outputs"] and "NotebookUserPolicy" not in stack["resources"]
    assert stack["environment"]["VERGER_CLUSTER_NOTEBOOK"] == ""


def test_the_stack_upkeep_schedule_starts_one_maintain_run_with_the_stack_retention(stack, lambda_context):
    # GIVEN the upkeep schedule's input
    payload = scheduled_payload(stack, "maintain", "2026-11-23T03:00:00Z")

    # WHEN it is delivered twice
    results = [handler(copy.deepcopy(payload), lambda_context) for _ in range(2)]

    # THEN one maintain manifest, with the stack's retention, in the stack's bucket, and one step on the cluster
    assert results[0]["batch_id"] == results[1]["batch_id"] and results[1]["submitted"] is False
    manifest = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=f"manifests/{results[0]['batch_id']}.json")
                          ["Body"].read())
    assert manifest["mode"] == "maintain" and manifest["extra"] == {"retention_days": 7}
    emr = boto3.client("emr")
    steps = emr.list_steps(ClusterId=find_live_cluster(emr, stack["outputs"]["ClusterName"]))["Steps"]
    assert [step["Name"] for step in steps] == [f"verger-{manifest['batch_id']}-attempt-1"]

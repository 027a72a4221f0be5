"""The deployed handler, fed the files in events/ and variations of them, under moto."""
from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from contract.layout import step_arguments
from functions import clients
from functions.app import handler

BUCKET = "verger-photos-example"  # named in events/*.json; the `bucket` fixture creates it
ENTRYPOINT = f"s3://{BUCKET}/code/step.py"
WAREHOUSE = f"s3://{BUCKET}/warehouse"
WEIGHTS = f"s3://{BUCKET}/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
BATCH_IMAGES = ["raw/Apple Red 1/r_13_100.jpg", "raw/Mañana Lime/0_100.jpg", "raw/Pitahaya Red/r_7_100.jpg"]


def expected_step_args(manifest_key: str) -> list[str]:
    manifest_uri = f"s3://{BUCKET}/{manifest_key}"
    return ["spark-submit", "--deploy-mode", "cluster", ENTRYPOINT,
            *step_arguments(manifest_uri, WAREHOUSE, WEIGHTS, 0.95)]


def poison(event: dict[str, Any], index: int) -> str:
    event["Records"][index]["body"] = "this is not JSON {"
    return event["Records"][index]["messageId"]


def test_s3_put_event_writes_a_manifest_with_the_decoded_key_and_adds_its_step(
    template_env, cluster_id, lambda_context, load_event, stored_manifests, cluster_steps
):
    # GIVEN the plain S3 event of events/s3-put.json (key "raw/Apple+Red+1/r_12_100.jpg")
    event = load_event("s3-put.json")

    # WHEN the handler receives it directly, as `sam local invoke -e` does
    result = handler(event, lambda_context)

    # THEN one incremental manifest holds the decoded key, and one step points at it
    manifests = stored_manifests(BUCKET)
    assert len(manifests) == 1
    [(key, manifest)] = manifests.items()
    assert manifest["mode"] == "incremental"
    assert manifest["source"] == f"s3://{BUCKET}"
    assert [item["key"] for item in manifest["items"]] == ["raw/Apple Red 1/r_12_100.jpg"]
    assert key == f"manifests/{manifest['batch_id']}.json"
    assert [step["Config"]["Args"] for step in cluster_steps(cluster_id)] == [expected_step_args(key)]
    assert [step["Name"] for step in cluster_steps(cluster_id)] == [f"verger-{manifest['batch_id']}-attempt-1"]
    assert result["batches"][0]["batch_id"] == manifest["batch_id"]


def test_the_default_stack_runs_each_step_at_fp32_without_an_int8_model(
    template_env, cluster_id, lambda_context, load_event, cluster_steps
):
    # GIVEN the stack deployed with the default Precision (fp32)
    assert template_env["VERGER_PRECISION"] == "fp32" and template_env["VERGER_INT8_MODEL_URI"] == ""

    # WHEN a photo arrives
    handler(load_event("s3-put.json"), lambda_context)

    # THEN its step asks the job for fp32, the contract, and names no int8 model
    [step] = cluster_steps(cluster_id)
    assert step["Config"]["Args"][-2:] == ["--precision", "fp32"]
    assert "--int8-model" not in step["Config"]["Args"]


def test_a_stack_deployed_at_int8_runs_each_step_with_the_precision_and_the_staged_model(
    template_environment, bucket, cluster_id, monkeypatch, lambda_context, load_event, stored_manifests, cluster_steps
):
    # GIVEN the stack deployed with Precision=int8 and the model staged as models/int8-<id>/
    environment = template_environment({"BucketName": bucket, "ExistingClusterId": cluster_id,
                                        "Precision": "int8", "Int8ModelName": "int8-0a1b2c3d4e5f"})
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    # WHEN a photo arrives, and a full recompute (the run that switches a store to int8) is asked for
    handler(load_event("s3-put.json"), lambda_context)
    handler(load_event("full-recompute.json"), lambda_context)

    # THEN both steps pass the job --precision int8 and the model's prefix, which the job downloads
    manifest_keys = sorted(stored_manifests(BUCKET), key=lambda key: "full" in key)
    args = [step["Config"]["Args"] for step in reversed(cluster_steps(cluster_id))]  # oldest first
    assert len(args) == 2
    for step_args in args:
        assert step_args[-4:] == ["--precision", "int8", "--int8-model", f"s3://{BUCKET}/models/int8-0a1b2c3d4e5f"]
    assert {a[a.index("--manifest") + 1] for a in args} == {f"s3://{BUCKET}/{key}" for key in manifest_keys}


def test_sqs_batch_event_drops_what_is_not_an_upload_and_submits_the_rest_in_one_manifest(
    template_env, cluster_id, lambda_context, load_event, stored_manifests, cluster_steps
):
    # GIVEN events/sqs-s3-batch.json: a test event, three photos (spaces, unicode), a folder marker, a .txt
    event = load_event("sqs-s3-batch.json")

    # WHEN the handler processes the batch
    response = handler(event, lambda_context)

    # THEN nothing fails, the three photos share one manifest, decoded, and one step runs it
    assert response == {"batchItemFailures": []}
    [(key, manifest)] = stored_manifests(BUCKET).items()
    assert [item["key"] for item in manifest["items"]] == BATCH_IMAGES
    assert [step["Config"]["Args"] for step in cluster_steps(cluster_id)] == [expected_step_args(key)]


def test_full_recompute_event_writes_one_item_less_full_manifest_and_starts_its_step(
    template_env, cluster_id, lambda_context, load_event, stored_manifests, cluster_steps
):
    # GIVEN photos under raw/ and in the inbox
    s3 = boto3.client("s3")
    for key in ["raw/Kiwi/1.jpg", "inbox/4.jpg"]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())

    # WHEN events/full-recompute.json is sent
    result = handler(load_event("full-recompute.json"), lambda_context)

    # THEN one full manifest without items (the job lists the bucket itself, distributed) and with a
    # nonce is written, and one step runs it
    [(key, manifest)] = stored_manifests(BUCKET).items()
    assert manifest["mode"] == "full" and manifest["items"] == [] and manifest["nonce"]
    assert [step["Config"]["Args"] for step in cluster_steps(cluster_id)] == [expected_step_args(key)]
    assert result["images"] == 0 and result["submitted"] is True

def test_maintain_schedule_writes_a_maintain_manifest_with_the_stack_retention_and_starts_its_step(
    template_env, cluster_id, lambda_context, load_event, stored_manifests, cluster_steps
):
    # GIVEN the trigger deployed with the template's default snapshot retention (7 days)
    assert template_env["VERGER_RETENTION_DAYS"] == "7"

    # WHEN events/scheduled-maintain.json arrives, twice (Scheduler delivers at least once)
    result = handler(load_event("scheduled-maintain.json"), lambda_context)
    handler(load_event("scheduled-maintain.json"), lambda_context)

    # THEN one item-less maintain manifest carries the retention, its nonce is the scheduled time,
    # and one step runs the job on it with the usual arguments
    [(key, manifest)] = stored_manifests(BUCKET).items()
    assert manifest["mode"] == "maintain" and manifest["items"] == []
    assert manifest["extra"] == {"retention_days": 7} and manifest["nonce"] == "2026-11-23T03:00:00Z"
    assert [step["Config"]["Args"] for step in cluster_steps(cluster_id)] == [expected_step_args(key)]
    assert [step["Name"] for step in cluster_steps(cluster_id)] == [f"verger-{manifest['batch_id']}-attempt-1"]
    assert result["submitted"] is True and result["images"] == 0


def test_the_same_sqs_batch_delivered_twice_gives_one_manifest_and_one_step(
    template_env, cluster_id, lambda_context, load_event, stored_manifests, cluster_steps
):
    # GIVEN a batch already processed once
    handler(load_event("sqs-s3-batch.json"), lambda_context)
    first = stored_manifests(BUCKET)

    # WHEN SQS delivers the same batch again
    response = handler(load_event("sqs-s3-batch.json"), lambda_context)

    # THEN it succeeds without a second manifest, a rewritten manifest or a second step
    assert response == {"batchItemFailures": []}
    assert stored_manifests(BUCKET) == first
    assert len(cluster_steps(cluster_id)) == 1


def test_a_poison_body_and_a_throttled_step_fail_exactly_their_records(
    template_env, cluster_id, lambda_context, monkeypatch, load_event, stored_manifests, cluster_steps
):
    # GIVEN one manifest per image, one poison body, and EMR throttling the step of the Pitahaya photo
    monkeypatch.setenv("VERGER_MAX_IMAGES_PER_MANIFEST", "1")
    event = load_event("sqs-s3-batch.json")
    poisoned = poison(event, 4)
    throttled = event["Records"][2]["messageId"]  # raw/Pitahaya Red/r_7_100.jpg
    emr = clients.client("emr")
    add_step = emr.add_job_flow_steps

    def throttle_pitahaya(**kwargs: Any) -> dict[str, Any]:
        manifest_uri = kwargs["Steps"][0]["HadoopJarStep"]["Args"][5]
        manifest = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=manifest_uri.split("/", 3)[3])["Body"].read())
        if manifest["items"][0]["key"].startswith("raw/Pitahaya Red/"):
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "AddJobFlowSteps")
        return add_step(**kwargs)

    monkeypatch.setattr(emr, "add_job_flow_steps", throttle_pitahaya)

    # WHEN the handler processes the batch
    response = handler(event, lambda_context)

    # THEN exactly the poison and the throttled records are reported, and the other photos got steps
    failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
    assert failed == {poisoned, throttled}
    submitted = {args[5] for args in [step["Config"]["Args"] for step in cluster_steps(cluster_id)]}
    keys = {stored_manifests(BUCKET)[uri.split("/", 3)[3]]["items"][0]["key"] for uri in submitted}
    assert keys == {"raw/Apple Red 1/r_13_100.jpg", "raw/Mañana Lime/0_100.jpg"}


def test_a_batch_whose_records_all_fail_raises_so_sqs_retries_it_whole(template_env, lambda_context, load_event):
    # GIVEN a batch of one poison message
    event = load_event("sqs-s3-batch.json")
    event["Records"] = event["Records"][1:2]
    poison(event, 0)

    # WHEN / THEN the invocation fails (powertools refuses an all-failed partial response)
    with pytest.raises(Exception, match="All records failed"):
        handler(event, lambda_context)


def test_a_failed_step_for_a_plain_s3_event_fails_the_invocation(
    template_env, cluster_id, lambda_context, monkeypatch, load_event, stored_manifests, cluster_steps
):
    # GIVEN EMR refusing every step
    def refuse(**kwargs: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "AddJobFlowSteps")

    monkeypatch.setattr(clients.client("emr"), "add_job_flow_steps", refuse)

    # WHEN / THEN a direct S3 invocation raises, naming the batch, so Lambda retries it
    with pytest.raises(Exception, match=r"batch incr-[0-9a-f]{20}: .*ThrottlingException"):
        handler(load_event("s3-put.json"), lambda_context)


def test_the_handler_publishes_one_metric_per_outcome(
    template_env, cluster_id, lambda_context, capsys, load_event, metric_blobs
):
    # GIVEN events/sqs-s3-batch.json (6 records: 3 photos, a test event, a folder marker, a .txt)
    event = load_event("sqs-s3-batch.json")

    # WHEN it is processed
    handler(event, lambda_context)

    # THEN the EMF output counts each outcome, drops by reason
    blobs = metric_blobs(capsys.readouterr().out)
    batch = next(blob for blob in blobs if "RecordsReceived" in blob)
    assert {name: batch[name] for name in (
        "RecordsReceived", "ImagesAccepted", "RecordsFailed", "ManifestsWritten", "StepsSubmitted",
        "DuplicateSubmissionsSkipped")} == {
        "RecordsReceived": [6.0], "ImagesAccepted": [3.0], "RecordsFailed": [0.0], "ManifestsWritten": [1.0],
        "StepsSubmitted": [1.0], "DuplicateSubmissionsSkipped": [0.0]}
    drops = {blob["Reason"]: blob["RecordsDropped"] for blob in blobs if "RecordsDropped" in blob}
    assert drops == {"folder-marker": [1.0], "not-an-image": [1.0], "test-event": [1.0]}
    assert all(blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Verger" for blob in blobs)


def test_an_unknown_action_is_refused_by_name(template_env, lambda_context):
    # GIVEN a manual event with a misspelt action
    event = {"action": "full-recompte"}

    # WHEN / THEN the handler names the action it does not know
    with pytest.raises(ValueError, match="unknown action 'full-recompte'"):
        handler(event, lambda_context)


def test_a_missing_setting_is_named(template_env, lambda_context, monkeypatch, load_event):
    # GIVEN the deployed environment without the bucket
    monkeypatch.delenv("VERGER_BUCKET")

    # WHEN / THEN the invocation fails naming the variable
    with pytest.raises(ValueError, match="VERGER_BUCKET is not set"):
        handler(copy.deepcopy(load_event("sqs-s3-batch.json")), lambda_context)


def test_start_cluster_creates_the_stack_cluster_once_and_then_finds_it(own_cluster_env, lambda_context):
    # GIVEN the default deployment and no cluster
    # WHEN a person asks twice for the cluster (verger notebook --start)
    first = handler({"action": "start-cluster"}, lambda_context)
    second = handler({"action": "start-cluster"}, lambda_context)
    # THEN one cluster, named as the stack's, was created and both answers name it
    clusters = boto3.client("emr").list_clusters()["Clusters"]
    assert [c["Name"] for c in clusters] == [own_cluster_env["VERGER_CLUSTER_NAME"]]
    assert first == second == {"action": "start-cluster", "cluster_id": clusters[0]["Id"]}


def test_start_cluster_is_refused_where_there_is_no_cluster(template_environment, bucket, monkeypatch, lambda_context):
    environment = template_environment({"BucketName": bucket, "Launcher": "emr-serverless", "ImageUri": "image",
                                        "ServerlessApplication": "00app", "ServerlessJobRole.Arn": "arn:aws:iam::123456789012:role/job"})
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="start-cluster needs Launcher=emr"):
        handler({"action": "start-cluster"}, lambda_context)

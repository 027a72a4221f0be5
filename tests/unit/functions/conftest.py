"""Fixtures for the trigger's tests: moto in-process, settings from template.yaml, real events.

Tests run in importlib mode, so helpers reach them as fixtures rather than as imports.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest
from moto import mock_aws

from verger.template import Resolver, load_template, resource_properties
from verger.template import function_environment as template_function_environment


# The benchmark is a script (python tests/unit/functions/bench_sqs_batch.py), not a test module.
collect_ignore = ["bench_sqs_batch.py"]

ROOT = Path(__file__).resolve().parents[3]
EVENTS = ROOT / "events"
TEMPLATE = ROOT / "template.yaml"
FUNCTION = "TriggerFunction"
BUCKET = "verger-photos-example"  # the bucket named in events/*.json
REGION = "eu-west-3"
ROLE_ARN = "arn:aws:iam::123456789012:role/verger-serverless-job"
STACK = "verger"
ALERT_TOPIC_ARN = f"arn:aws:sns:{REGION}:123456789012:verger-alerts"
# What the stack would create for its own cluster (refs of the function's VERGER_CLUSTER_* variables).
OWN_CLUSTER_REFS = {
    "EmrServiceRole": "verger-EmrServiceRole", "EmrInstanceProfile": "verger-EmrInstanceProfile",
    "ClusterSecurityConfiguration": "verger-verger",
}


def resolver(refs: dict[str, str]) -> Resolver:
    """The demo's template reader, with test values for the account and the references."""
    return Resolver(load_template(TEMPLATE), {"AWS::Region": REGION, "AWS::AccountId": "123456789012",
                                              "AWS::StackName": STACK, "AlertTopic": ALERT_TOPIC_ARN, **refs})


def global_environment(refs: dict[str, str]) -> dict[str, str]:
    """The environment `Globals` gives every function (the Powertools settings)."""
    variables = load_template(TEMPLATE).get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    return {name: str(value) for name, value in resolver(refs).resolve(variables).items()}


def function_environment(refs: dict[str, str]) -> dict[str, str]:
    """The trigger's environment as deployed: Globals merged with the function's own variables."""
    return template_function_environment(load_template(TEMPLATE), FUNCTION, resolver(refs))


# Lambda sets the environment before it imports the handler, and Powertools reads its settings
# (service, namespace, log level) when the module-level Logger and Metrics are built: do the same.
for _name, _value in global_environment({}).items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")


def function_handler() -> str:
    return resource_properties(load_template(TEMPLATE), FUNCTION)["Handler"]


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


@dataclass
class FakeLambdaContext:
    function_name: str = "verger-trigger"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:verger-trigger"
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 120_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture(name="load_event")
def load_event_fixture() -> Callable[[str], dict[str, Any]]:
    """Load a file of events/ by name."""
    return load_event


@pytest.fixture
def template_environment() -> Callable[[dict[str, str]], dict[str, str]]:
    """Render the function's environment from template.yaml with test values for references."""
    return function_environment


@pytest.fixture
def template_handler() -> str:
    return function_handler()


@pytest.fixture
def stored_manifests() -> Callable[[str], dict[str, dict[str, Any]]]:
    return manifests_in


@pytest.fixture
def cluster_steps() -> Callable[[str], list[dict[str, Any]]]:
    return steps_on


@pytest.fixture
def metric_blobs() -> Callable[[str], list[dict[str, Any]]]:
    return emitted_metrics


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    """moto in-process with dummy credentials; boto3 clients cached by the function are reset."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    from functions import clients

    clients.client.cache_clear()
    with mock_aws():
        yield
    clients.client.cache_clear()


@pytest.fixture
def bucket(aws) -> str:
    boto3.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    return BUCKET


@pytest.fixture
def cluster_id(aws) -> str:
    return boto3.client("emr").run_job_flow(
        Name="verger-test",
        ReleaseLabel="emr-7.13.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]


@pytest.fixture
def template_env(monkeypatch: pytest.MonkeyPatch, bucket: str, cluster_id: str) -> dict[str, str]:
    """The deployed environment (Launcher=emr, ExistingClusterId), set on os.environ."""
    environment = function_environment({"BucketName": bucket, "ExistingClusterId": cluster_id})
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


@pytest.fixture
def own_cluster_refs() -> dict[str, str]:
    """What the stack would create for its own cluster, to render other parameter choices."""
    return dict(OWN_CLUSTER_REFS)


@pytest.fixture
def own_cluster_env(monkeypatch: pytest.MonkeyPatch, bucket: str) -> dict[str, str]:
    """The default deployment (Launcher=emr, no ExistingClusterId): the trigger creates the cluster."""
    environment = function_environment({"BucketName": bucket, **OWN_CLUSTER_REFS})
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


@pytest.fixture(autouse=True)
def reset_metrics():
    """Powertools keeps metrics at class level: start and end every test with none."""
    from functions.app import metrics

    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def emitted_metrics(stdout: str) -> list[dict[str, Any]]:
    """The EMF blobs powertools printed, each as {metric name: value, dimension: value, …}."""
    return [
        blob
        for blob in (json.loads(line) for line in stdout.splitlines() if line.startswith("{"))
        if "_aws" in blob
    ]


def manifests_in(bucket: str) -> dict[str, dict[str, Any]]:
    """The manifests only: attempt records and the cluster lease live in sub-folders."""
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="manifests/", Delimiter="/").get("Contents", [])
    return {
        entry["Key"]: json.loads(s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read())
        for entry in listed
    }


def steps_on(cluster: str) -> list[dict[str, Any]]:
    return boto3.client("emr").list_steps(ClusterId=cluster)["Steps"]

"""The template's security tests fail when a property breaks: each harmful edit below, applied to a
copy of template.yaml, must make test_template_security.py fail.

A mutation that finds nothing to change fails too: the list must follow the template (if a
property moves, for example the cluster definition, point its mutation at the new place).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.unit.template.conftest import TEMPLATE_ENV, load_template

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SECURITY_TESTS = HERE / "test_template_security.py"


class NothingToMutate(LookupError):
    """The mutation's target is not in the template any more."""


def statements_of(template: dict, resource: str) -> list[dict]:
    props = template["Resources"][resource]["Properties"]
    documents = [p["PolicyDocument"] for p in props.get("Policies", [])] or [props["PolicyDocument"]]
    found = [s for d in documents for s in d["Statement"]]
    return [b for s in found for b in (s["Fn::If"][1:] if "Fn::If" in s else [s]) if isinstance(b, dict) and "Effect" in b]


def statement(template: dict, resource: str, action_prefix: str) -> dict:
    for found in statements_of(template, resource):
        actions = found["Action"] if isinstance(found["Action"], list) else [found["Action"]]
        if found["Effect"] == "Allow" and any(a.startswith(action_prefix) for a in actions):
            return found
    raise NothingToMutate(f"{resource} has no Allow statement for {action_prefix}*")


def add_action(template: dict, resource: str, action_prefix: str, action: str) -> None:
    found = statement(template, resource, action_prefix)
    found["Action"] = [*(found["Action"] if isinstance(found["Action"], list) else [found["Action"]]), action]


def add_resource(template: dict, resource: str, action_prefix: str, arn) -> None:
    found = statement(template, resource, action_prefix)
    found["Resource"] = [*(found["Resource"] if isinstance(found["Resource"], list) else [found["Resource"]]), arn]


def drop_tls_denial(template: dict, policy: str) -> None:
    document = template["Resources"][policy]["Properties"]["PolicyDocument"]
    kept = [s for s in document["Statement"] if s.get("Effect") != "Deny"]
    if len(kept) == len(document["Statement"]):
        raise NothingToMutate(f"{policy} has no Deny statement")
    document["Statement"] = kept


def pop(template: dict, resource: str, *path: str) -> None:
    node = template["Resources"][resource]["Properties"]
    for key in path[:-1]:
        node = node[key]
    if path[-1] not in node:
        raise NothingToMutate(f"{resource} has no {'.'.join(path)}")
    del node[path[-1]]


def props(template: dict, resource: str) -> dict:
    return template["Resources"][resource]["Properties"]


def drop_noncurrent_expiry(template: dict) -> None:
    rules = props(template, "Bucket")["LifecycleConfiguration"]["Rules"]
    kept = [r for r in rules if "NoncurrentVersionExpiration" not in r]
    if len(kept) == len(rules):
        raise NothingToMutate("no NoncurrentVersionExpiration rule")
    props(template, "Bucket")["LifecycleConfiguration"]["Rules"] = kept


def trigger_reads_photos(template: dict) -> None:
    statement(template, "TriggerRole", "logs:")  # the role's policy exists
    props(template, "TriggerRole")["Policies"][0]["PolicyDocument"]["Statement"].append(
        {"Effect": "Allow", "Action": "s3:GetObject",
         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/raw/*"}})


def open_notebook_port(template: dict) -> None:
    if "ClusterPrimarySecurityGroup" not in template["Resources"]:
        raise NothingToMutate("no primary node security group")
    template["Resources"]["NotebookFromAnywhere"] = {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
        "GroupId": {"Ref": "ClusterPrimarySecurityGroup"}, "IpProtocol": "tcp", "FromPort": 9443, "ToPort": 9443,
        "CidrIp": "0.0.0.0/0"}}


def allow_any_session_document(template: dict) -> None:
    found = statement(template, "NotebookUserPolicy", "ssm:StartSession")
    if "BoolIfExists" not in found.get("Condition", {}):
        raise NothingToMutate("no session document check")
    del found["Condition"]["BoolIfExists"]


MUTATIONS: dict[str, Callable[[dict], None]] = {
    # the four the issue found
    "job reads every bucket": lambda t: add_resource(t, "JobDataAccessPolicy", "s3:GetObject", "arn:aws:s3:::*"),
    "job may delete Glue tables": lambda t: add_action(t, "JobDataAccessPolicy", "glue:", "glue:Delete*"),
    "queue accepts plain HTTP": lambda t: drop_tls_denial(t, "UploadQueuePolicy"),
    # and more
    "dead-letter queue accepts plain HTTP": lambda t: drop_tls_denial(t, "DeadLetterQueuePolicy"),
    "bucket accepts plain HTTP": lambda t: drop_tls_denial(t, "BucketPolicy"),
    "log bucket accepts plain HTTP": lambda t: drop_tls_denial(t, "AccessLogBucketPolicy"),
    "job writes photos": lambda t: add_resource(
        t, "JobDataAccessPolicy", "s3:PutObject", {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/raw/*"}),
    "job reads another bucket by prefix": lambda t: add_resource(
        t, "JobDataAccessPolicy", "s3:GetObject", "arn:aws:s3:::someone-elses-*"),
    "trigger reads photos again": trigger_reads_photos,
    "trigger passes any role": lambda t: add_resource(t, "TriggerRole", "iam:PassRole", "*"),
    "trigger may do anything in S3": lambda t: add_action(t, "TriggerRole", "s3:PutObject", "s3:*"),
    "versioning suspended": lambda t: props(t, "Bucket").update(VersioningConfiguration={"Status": "Suspended"}),
    "old versions kept forever": drop_noncurrent_expiry,
    "no access logging": lambda t: pop(t, "Bucket", "LoggingConfiguration"),
    "any bucket may deliver logs": lambda t: statement(t, "AccessLogBucketPolicy", "s3:PutObject").pop("Condition"),
    "no reserved concurrency": lambda t: pop(t, "TriggerFunction", "ReservedConcurrentExecutions"),
    "public bucket policies allowed": lambda t: props(t, "Bucket")["PublicAccessBlockConfiguration"].update(
        BlockPublicPolicy=False),
    "log bucket unencrypted": lambda t: pop(t, "AccessLogBucket", "BucketEncryption"),
    "dead-letter queue unencrypted": lambda t: props(t, "UploadDeadLetterQueue").update(SqsManagedSseEnabled=False),
    # the notebook server
    "notebook port opened on the primary node": open_notebook_port,
    "notebook users may open a shell": allow_any_session_document,
    "notebook users read every parameter": lambda t: add_resource(t, "NotebookUserPolicy", "ssm:GetParameter", "*"),
    "cluster nodes get the broad SSM managed policy": lambda t: props(t, "EmrInstanceRole")["ManagedPolicyArns"].append(
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}),
}


def run_security_tests(template: dict, folder: Path) -> subprocess.CompletedProcess:
    path = folder / "template.yaml"
    path.write_text(yaml.safe_dump(template, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(SECURITY_TESTS)],
        cwd=REPO, env={**os.environ, TEMPLATE_ENV: str(path)}, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def original() -> dict:
    return load_template()


def test_the_unmutated_copy_passes(original, tmp_path):
    # GIVEN the template written back the way every mutant is  THEN the security tests pass, so a
    # failure below comes from the mutation alone
    result = run_security_tests(copy.deepcopy(original), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_security_tests_catch_the_harmful_edit(name, original, tmp_path):
    # GIVEN a copy of the template with one harmful edit
    mutant = copy.deepcopy(original)
    MUTATIONS[name](mutant)
    # WHEN the security tests run against it  THEN some test fails (exit 1: failures, not a crash)
    result = run_security_tests(mutant, tmp_path)
    assert result.returncode == 1, f"{name!r} was not caught:\n{result.stdout[-3000:]}"

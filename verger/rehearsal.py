"""A deploy rehearsal: template.yaml translated as `sam deploy` does, created in moto's CloudFormation.

`aws-sam-translator` (the library inside the SAM CLI) expands the serverless resources; moto then
creates the stack, so tests can run the trigger against the resources the stack made (bucket,
queues, topic, rule, roles, security configuration, the function's real environment).

Two adaptations for moto, neither changing what is created: moto orders creation by `DependsOn`
only (CloudFormation also follows `Ref`/`GetAtt`/`Sub`), so those references are made explicit;
and moto's KMS reads CloudFormation tags with the API's `TagKey` names, so a key's tags are left
out. moto cannot create `MOTO_CANNOT_CREATE`; the template's unit tests cover those.
"""
from __future__ import annotations

import copy
import io
import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from verger.template import TEMPLATE

FUNCTION = "TriggerFunction"
MOTO_CANNOT_CREATE = (
    "AWS::Glue::Database", "AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::CloudWatch::Alarm",
    "AWS::Scheduler::Schedule", "AWS::Glue::Table", "AWS::Athena::WorkGroup", "AWS::Athena::NamedQuery",
)
_SUB_NAME = re.compile(r"\$\{([^}!]+)\}")


class _NoManagedPolicies:
    """The translator resolves managed policy names through IAM; the template names none."""

    def load(self) -> dict[str, str]:
        return {}


def translate(code_uri: str, parameters: Mapping[str, str] | None = None, path: Path = TEMPLATE) -> dict[str, Any]:
    """The CloudFormation template SAM would deploy, with the function's code at `code_uri`
    (what `sam package` does with the built folder)."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    sam = yaml_parse(path.read_text(encoding="utf-8"))
    sam["Resources"][FUNCTION]["Properties"]["CodeUri"] = code_uri
    return transform(sam, dict(parameters or {}), _NoManagedPolicies())


def for_moto(cfn: Mapping[str, Any]) -> dict[str, Any]:
    """The template with implicit dependencies made explicit and KMS key tags left out."""
    ready = copy.deepcopy(dict(cfn))
    names = set(ready["Resources"])
    for name, resource in ready["Resources"].items():
        needed = references(resource.get("Properties", {}), names) - {name}
        declared = resource.get("DependsOn", [])
        declared = [declared] if isinstance(declared, str) else list(declared)
        if needed - set(declared):
            resource["DependsOn"] = sorted(set(declared) | needed)
        if resource["Type"] == "AWS::KMS::Key":
            resource.get("Properties", {}).pop("Tags", None)
    return ready


def references(node: Any, names: set[str]) -> set[str]:
    """Resources a node refers to through `Ref`, `Fn::GetAtt` or `${…}` in `Fn::Sub`."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else str(value).split(".")[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {match.split(".")[0] for match in _SUB_NAME.findall(text)}
                found |= references(value if isinstance(value, str) else value[1:], names)
            else:
                found |= references(value, names)
    elif isinstance(node, list):
        for item in node:
            found |= references(item, names)
    return found & names


def deploy(stack: str, bucket: str, parameters: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Create the stack against the current AWS endpoint (moto); returns its description:
    `status`, `outputs`, `resources` (logical id → physical id) and the function's environment."""
    import boto3

    s3, cloudformation = boto3.client("s3"), boto3.client("cloudformation")
    artifacts = f"{bucket}-artifacts"
    s3.create_bucket(Bucket=artifacts, CreateBucketConfiguration={"LocationConstraint": s3.meta.region_name})
    s3.put_object(Bucket=artifacts, Key="trigger.zip", Body=_empty_zip())
    values = {"BucketName": bucket, **(parameters or {})}
    template = for_moto(translate(f"s3://{artifacts}/trigger.zip", values))
    cloudformation.create_stack(
        StackName=stack, TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in values.items()],
    )
    description = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    summaries = cloudformation.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    function = boto3.client("lambda").get_function_configuration(FunctionName=f"{stack}-trigger")
    return {
        "status": description["StackStatus"],
        "outputs": {output["OutputKey"]: output["OutputValue"] for output in description.get("Outputs", [])},
        "resources": {summary["LogicalResourceId"]: summary.get("PhysicalResourceId") for summary in summaries},
        "types": {summary["LogicalResourceId"]: summary["ResourceType"] for summary in summaries},
        "environment": function["Environment"]["Variables"],
        "template": template,
    }


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README", "the rehearsal never runs the packaged code: tests call the handler in-process\n")
    return buffer.getvalue()

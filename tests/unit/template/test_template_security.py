"""Security and wiring properties of template.yaml, one per test, read from the parsed template."""
from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from bootstrap import stage
from contract import layout
from emr_job.engines.int8_model import MODEL_FILES
from emr_job.upkeep import DEFAULT_RETENTION
from functions.settings import DEFAULT_RETENTION_DAYS

REPO = Path(__file__).resolve().parents[3]
IMAGE_SUFFIX_VARIANTS = {s for suffix in layout.IMAGE_SUFFIXES for s in (suffix, suffix.upper())}
# Actions AWS offers no resource-level permission for; the only ones allowed on Resource '*'.
ACTIONS_WITHOUT_RESOURCE_PERMISSIONS = {
    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "elasticmapreduce:ListClusters", "ec2:DescribeInstances",
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
}


# ---------------------------------------------------------------- helpers
def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def text(value) -> str:
    """A Sub/Ref/plain value as one string (`${Name}` for references), to compare ARNs."""
    if isinstance(value, str):
        return value
    if "Fn::Sub" in value:
        return text(as_list(value["Fn::Sub"])[0])
    if "Ref" in value:
        return "${" + value["Ref"] + "}"
    if "Fn::GetAtt" in value:
        return "${" + ".".join(value["Fn::GetAtt"]) + "}"
    raise AssertionError(f"cannot render {value!r}")


def statements(document: dict) -> list[dict]:
    """Every statement, with both branches of conditional (Fn::If) statements."""
    found = []
    for statement in as_list(document["Statement"]):
        if "Fn::If" in statement:
            found += [b for b in statement["Fn::If"][1:] if b != {"Ref": "AWS::NoValue"}]
        else:
            found.append(statement)
    return found


def policy_documents(resources: dict) -> dict[str, list[dict]]:
    """Statements per IAM role, managed policy, bucket policy and queue policy."""
    documents = {}
    for name, resource in resources.items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            documents[name] = [s for p in props.get("Policies", []) for s in statements(p["PolicyDocument"])]
        elif resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"):
            documents[name] = statements(props["PolicyDocument"])
    return documents


def allowed(statements_: list[dict], action: str) -> list[dict]:
    return [s for s in statements_ if s["Effect"] == "Allow" and action in as_list(s["Action"])]


def resources_of(statements_: list[dict]) -> set[str]:
    return {text(r) for s in statements_ for r in as_list(s["Resource"])}


def bucket_arn(suffix: str = "") -> str:
    return "arn:${AWS::Partition}:s3:::${BucketName}" + suffix


def grants(statements_: list[dict], action: str, resource: str) -> bool:
    """Whether an Allow statement covers `action` on `resource`, wildcards (`glue:Delete*`,
    `arn:aws:s3:::*`) included."""
    return any(
        s["Effect"] == "Allow"
        and any(fnmatchcase(action, pattern) for pattern in as_list(s["Action"]))
        and any(fnmatchcase(resource, pattern) for pattern in map(text, as_list(s["Resource"])))
        for s in statements_
    )


def of_type(resources: dict, kind: str) -> dict[str, dict]:
    return {name: resource for name, resource in resources.items() if resource["Type"] == kind}


def tls_denials(statements_: list[dict], arns: set[str]) -> list[dict]:
    """Statements denying every action, to anyone, on exactly `arns`, when TLS is not used."""
    return [
        s for s in statements_
        if s["Effect"] == "Deny" and s["Principal"] == "*" and as_list(s["Action"])[0].endswith(":*")
        and resources_of([s]) == arns and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ]


@pytest.fixture(scope="module")
def bucket(resources):
    return resources["Bucket"]["Properties"]


@pytest.fixture(scope="module")
def trigger(resources):
    return resources["TriggerFunction"]["Properties"]


@pytest.fixture(scope="module")
def lambda_statements(resources):
    return policy_documents(resources)["TriggerRole"]


@pytest.fixture(scope="module")
def job_statements(resources):
    return policy_documents(resources)["JobDataAccessPolicy"]


# ---------------------------------------------------------------- bucket
def test_every_bucket_encrypts_every_object_by_default(resources):
    for name, bucket_ in of_type(resources, "AWS::S3::Bucket").items():
        # GIVEN the bucket's encryption configuration
        rules = bucket_["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        # THEN a default server-side encryption algorithm is set (SSE-S3: access logs need it)
        assert [r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules] == ["AES256"], name


def test_every_bucket_blocks_all_four_kinds_of_public_access_and_acls(resources):
    for name, bucket_ in of_type(resources, "AWS::S3::Bucket").items():
        props = bucket_["Properties"]
        # GIVEN the public access block  THEN all four switches are on, and ACLs are disabled
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }, name
        assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}, name


def test_every_bucket_policy_denies_every_request_without_tls(resources):
    policies = of_type(resources, "AWS::S3::BucketPolicy").values()
    for name in of_type(resources, "AWS::S3::Bucket"):
        # GIVEN the bucket's policy (the photo bucket's ARNs are built from its name)
        (policy,) = [p["Properties"] for p in policies if p["Properties"]["Bucket"] == {"Ref": name}]
        arns = ({bucket_arn(), bucket_arn("/*")} if name == "Bucket"
                else {f"${{{name}.Arn}}", f"${{{name}.Arn}}/*"})
        # THEN one statement denies all S3 actions, on the bucket and its objects, to anyone without TLS
        assert tls_denials(statements(policy["PolicyDocument"]), arns), name


def test_bucket_logs_every_request_to_the_access_log_bucket(bucket):
    # GIVEN the photo bucket's logging  THEN server access logs go to the log bucket, under s3-access/
    assert bucket["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": "AccessLogBucket"},
                                              "LogFilePrefix": "s3-access/"}


def test_access_log_bucket_admits_only_log_delivery_from_the_photo_bucket(resources):
    # GIVEN the log bucket policy's Allow statements
    allows = [s for s in policy_documents(resources)["AccessLogBucketPolicy"] if s["Effect"] == "Allow"]
    # THEN only S3's logging service may write, only under s3-access/, only for this bucket and account
    (statement,) = allows
    assert statement["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert statement["Action"] == "s3:PutObject"
    assert resources_of([statement]) == {"${AccessLogBucket.Arn}/s3-access/*"}
    assert text(statement["Condition"]["ArnLike"]["aws:SourceArn"]) == bucket_arn()
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_access_logs_expire_after_their_retention_parameter(resources):
    rules = resources["AccessLogBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert [(r["Status"], r["ExpirationInDays"]) for r in rules] == [("Enabled", {"Ref": "AccessLogRetentionDays"})]


def test_manifests_expire_after_the_retention_parameter(bucket):
    # GIVEN the lifecycle rules
    rules = {r.get("Prefix"): r for r in bucket["LifecycleConfiguration"]["Rules"]}
    # THEN manifests/ expires after the ManifestRetentionDays parameter
    assert rules[layout.MANIFEST_PREFIX]["ExpirationInDays"] == {"Ref": "ManifestRetentionDays"}
    assert rules[layout.MANIFEST_PREFIX]["Status"] == "Enabled"


def test_no_lifecycle_rule_expires_the_warehouse_where_iceberg_keeps_the_quarantine(bucket):
    # GIVEN the lifecycle rules that expire objects
    expiring = [r for r in bucket["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r]
    # THEN none covers warehouse/: expiring files that Iceberg snapshots reference breaks the tables
    assert expiring and all(r.get("Prefix") and not "warehouse/".startswith(r["Prefix"]) for r in expiring)


def test_bucket_keeps_previous_versions_and_expires_them(template, bucket):
    # GIVEN the versioning configuration  THEN it is on, unconditionally
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    # AND a bucket-wide rule deletes previous versions after NoncurrentVersionDays
    expiring = [r for r in bucket["LifecycleConfiguration"]["Rules"]
                if "NoncurrentVersionExpiration" in r and r["Status"] == "Enabled" and not r.get("Prefix")]
    assert [r["NoncurrentVersionExpiration"] for r in expiring] == [{"NoncurrentDays": {"Ref": "NoncurrentVersionDays"}}]
    assert 1 <= template["Parameters"]["NoncurrentVersionDays"]["Default"] <= 90


def test_files_the_upkeep_or_an_erasure_deletes_stay_recoverable_one_day_only(bucket):
    # GIVEN the rules that expire previous versions under a prefix
    rules = {r["Prefix"]: r for r in bucket["LifecycleConfiguration"]["Rules"]
             if r.get("Prefix") and "NoncurrentVersionExpiration" in r and r["Status"] == "Enabled"}
    # THEN a deleted data file or suggestion file is gone a day later, not NoncurrentVersionDays later
    for prefix in ("warehouse/", "suggestions/"):
        assert rules[prefix]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
        assert "ExpirationInDays" not in rules[prefix]  # current files belong to Iceberg, never to S3


# ---------------------------------------------------------------- notifications and queue
def test_every_image_suffix_under_raw_and_inbox_notifies_the_queue(bucket):
    # GIVEN the bucket's queue notifications
    configs = bucket["NotificationConfiguration"]["QueueConfigurations"]
    filters = set()
    for config in configs:
        rules = {r["Name"]: r["Value"] for r in config["Filter"]["S3Key"]["Rules"]}
        filters.add((config["Event"], rules["prefix"], rules["suffix"]))
    # THEN each (prefix, suffix) pair the trigger accepts has its own rule for uploads and for
    # removals, both cases, no others
    expected = {(event, p, s) for event in ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")
                for p in (layout.RAW_PREFIX, layout.INBOX_PREFIX) for s in IMAGE_SUFFIX_VARIANTS}
    assert filters == expected
    assert len(configs) == len(expected)


def test_notifications_are_upload_and_removal_events_to_the_upload_queue(bucket):
    configs = bucket["NotificationConfiguration"]["QueueConfigurations"]
    # THEN every rule sends ObjectCreated or ObjectRemoved events to the upload queue
    assert {c["Event"] for c in configs} == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
    assert {tuple(c["Queue"]["Fn::GetAtt"]) for c in configs} == {("UploadQueue", "Arn")}


def test_bucket_waits_for_the_queue_policy_that_admits_it(resources):
    # THEN the bucket is created after the queue policy (S3 checks it when saving notifications)
    assert "UploadQueuePolicy" in as_list(resources["Bucket"]["DependsOn"])


def test_queue_policy_admits_only_this_bucket_from_this_account(resources):
    # GIVEN the queue policy's Allow statements
    allows = [s for s in policy_documents(resources)["UploadQueuePolicy"] if s["Effect"] == "Allow"]
    # THEN only S3 may send, only from this bucket (ARN built from the name) and this account
    assert len(allows) == 1
    (statement,) = allows
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert text(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == bucket_arn()
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_every_queue_denies_every_request_without_tls(resources):
    policies = [p["Properties"] for p in of_type(resources, "AWS::SQS::QueuePolicy").values()]
    for name in of_type(resources, "AWS::SQS::Queue"):
        # GIVEN the policies attached to the queue
        attached = [s for p in policies if {"Ref": name} in p["Queues"] for s in statements(p["PolicyDocument"])]
        # THEN one of them denies every SQS action on it, to anyone, without TLS
        assert tls_denials(attached, {f"${{{name}.Arn}}"}), name


def test_failing_records_reach_the_dead_letter_queue_after_a_few_receives(resources):
    redrive = resources["UploadQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["UploadDeadLetterQueue", "Arn"]}
    assert 1 <= redrive["maxReceiveCount"] <= 5


def test_visibility_timeout_covers_six_function_timeouts_plus_the_longest_batching_window(template, resources, trigger):
    # GIVEN the function timeout and the largest allowed batching window
    longest_window = template["Parameters"]["BatchingWindowSeconds"]["MaxValue"]
    visibility = resources["UploadQueue"]["Properties"]["VisibilityTimeout"]
    # THEN a message stays invisible for the whole time an invocation may hold it (AWS's advice)
    assert visibility >= 6 * trigger["Timeout"] + longest_window


def test_queues_are_encrypted_at_rest(resources):
    for name, queue in of_type(resources, "AWS::SQS::Queue").items():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True, name


# ---------------------------------------------------------------- the trigger function
def test_function_runs_the_agreed_handler_on_a_current_python(template, trigger):
    assert trigger["Handler"] == "functions.app.handler"
    assert template["Globals"]["Function"]["Runtime"] in {"python3.12", "python3.13"}


def test_function_package_holds_only_functions_and_contract(trigger, resources):
    # GIVEN the makefile build the template selects
    assert resources["TriggerFunction"]["Metadata"]["BuildMethod"] == "makefile"
    makefile = (REPO / trigger["CodeUri"] / "Makefile").read_text()
    # THEN its copy line names exactly the two packages, and dependencies come from the Lambda lock
    copies = [line.split() for line in makefile.splitlines() if line.strip().startswith("cp ")]
    assert [[w.strip('"') for w in c[2:-1]] for c in copies] == [
        ["$(REPO_ROOT)/functions", "$(REPO_ROOT)/contract"]
    ]
    assert "bootstrap/requirements-lambda.txt" in makefile


def test_function_environment_sets_every_variable_the_trigger_reads(template, trigger):
    names = set(trigger["Environment"]["Variables"]) | set(template["Globals"]["Function"]["Environment"]["Variables"])
    cluster = {f"VERGER_CLUSTER_{name}" for name in (
        "NAME", "STACK", "REGION", "RELEASE", "INSTANCE_TYPE", "CORE_COUNT", "CORE_MARKET", "IDLE_TIMEOUT",
        "SERVICE_ROLE", "INSTANCE_PROFILE", "SECURITY_CONFIGURATION", "SUBNET", "MASTER_SG", "WORKER_SG",
        "SERVICE_ACCESS_SG", "NOTEBOOK")}
    assert names == {
        "VERGER_BUCKET", "VERGER_LAUNCHER", "VERGER_EMR_CLUSTER_ID", "VERGER_EMR_APPLICATION_ID",
        "VERGER_EMR_JOB_ROLE_ARN", "VERGER_JOB_ENTRYPOINT", "VERGER_WAREHOUSE_URI", "VERGER_WEIGHTS_URI",
        "VERGER_VARIANCE_TARGET", "VERGER_PRECISION", "VERGER_INT8_MODEL_URI", "VERGER_MAX_IMAGES_PER_MANIFEST",
        "VERGER_MAX_ATTEMPTS",
        "VERGER_RECONCILE_GRACE_MINUTES", "VERGER_RETENTION_DAYS", "VERGER_ALERT_TOPIC_ARN",
        "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL",
    } | cluster


def test_environment_points_at_what_the_staging_command_uploads(template, trigger):
    env = trigger["Environment"]["Variables"]
    assert text(env["VERGER_JOB_ENTRYPOINT"]) == f"s3://${{BucketName}}/{stage.STEP_KEY}"
    assert text(env["VERGER_WEIGHTS_URI"]) == f"s3://${{BucketName}}/{stage.WEIGHTS_KEY}"
    assert text(env["VERGER_WAREHOUSE_URI"]) == "s3://${BucketName}/warehouse"


def test_launcher_and_variance_come_from_parameters_with_agreed_defaults(template, trigger):
    env = trigger["Environment"]["Variables"]
    assert env["VERGER_LAUNCHER"] == {"Ref": "Launcher"}
    assert template["Parameters"]["Launcher"]["Default"] == "emr"
    assert env["VERGER_VARIANCE_TARGET"] == {"Ref": "VarianceTarget"}
    assert float(template["Parameters"]["VarianceTarget"]["Default"]) == layout.DEFAULT_VARIANCE_TARGET
    assert template["Parameters"]["MaxImagesPerManifest"]["Default"] == 5000


def test_precision_comes_from_a_parameter_offering_the_jobs_choices_with_the_contract_as_default(template, trigger):
    env = trigger["Environment"]["Variables"]
    assert env["VERGER_PRECISION"] == {"Ref": "Precision"}
    parameter = template["Parameters"]["Precision"]
    assert tuple(parameter["AllowedValues"]) == layout.PRECISIONS
    assert parameter["Default"] == layout.DEFAULT_PRECISION == "fp32"


def test_the_int8_model_uri_names_the_staged_folder_under_models_or_is_empty(template, trigger):
    # GIVEN the variable the trigger passes to the job as --int8-model
    env = trigger["Environment"]["Variables"]
    condition, given, absent = env["VERGER_INT8_MODEL_URI"]["Fn::If"]
    # THEN it is the folder staging uploads (models/<name>) when a name is given, and empty by default
    assert condition == "HasInt8Model" and absent == ""
    assert text(given) == f"s3://${{BucketName}}/{stage.MODELS_PREFIX}${{Int8ModelName}}"
    assert template["Conditions"]["HasInt8Model"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "Int8ModelName"}, ""]}]}
    parameter = template["Parameters"]["Int8ModelName"]
    assert parameter["Default"] == ""
    # and a name is accepted exactly when it is one `verger quantize` writes and staging uploads
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("")
    for name in ("int8-0a1b2c3d4e5f", "int8-0A1B2C3D4E5F", "int8-0a1b", "../code", "int8-0a1b2c3d4e5f/x"):
        assert bool(pattern.fullmatch(name)) == bool(stage.INT8_MODEL_NAME.fullmatch(name)) == (name == "int8-0a1b2c3d4e5f")


def test_int8_and_its_model_name_are_given_together_at_deploy_time(template):
    # GIVEN the rules CloudFormation checks before it changes the stack
    needs_model = template["Rules"]["Int8NeedsItsModel"]
    only_with_int8 = template["Rules"]["Int8ModelOnlyWithInt8"]
    # THEN Precision=int8 needs Int8ModelName, and Int8ModelName needs Precision=int8
    assert needs_model["RuleCondition"] == {"Fn::Equals": [{"Ref": "Precision"}, "int8"]}
    assert [a["Assert"] for a in needs_model["Assertions"]] == [{"Fn::Not": [{"Fn::Equals": [{"Ref": "Int8ModelName"}, ""]}]}]
    assert only_with_int8["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "Int8ModelName"}, ""]}]}
    assert [a["Assert"] for a in only_with_int8["Assertions"]] == [{"Fn::Equals": [{"Ref": "Precision"}, "int8"]}]


def test_queue_events_report_batch_item_failures_with_a_window_parameter(trigger):
    (event,) = [e for e in trigger["Events"].values() if e["Type"] == "SQS"]
    props = event["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["MaximumBatchingWindowInSeconds"] == {"Ref": "BatchingWindowSeconds"}
    assert 1 <= props["BatchSize"] <= 10000


def test_the_schedule_sends_reconcile_with_its_scheduled_time_as_the_sweep_nonce(template, trigger):
    # GIVEN the function's reconcile Scheduler event
    event = trigger["Events"]["Reconcile"]
    assert event["Type"] == "ScheduleV2"
    props = event["Properties"]
    # THEN it runs on the ReconcileSchedule parameter (6 hours by default) with Scheduler's own time
    assert props["ScheduleExpression"] == {"Ref": "ReconcileSchedule"}
    assert template["Parameters"]["ReconcileSchedule"]["Default"] == "rate(6 hours)"
    assert json.loads(props["Input"]) == {"action": "reconcile", "scheduled_time": "<aws.scheduler.scheduled-time>"}


def test_the_upkeep_schedule_sends_maintain_and_the_trigger_gets_the_retention_parameter(template, trigger):
    # GIVEN the function's upkeep Scheduler event
    event = trigger["Events"]["Maintain"]
    assert event["Type"] == "ScheduleV2"
    props = event["Properties"]
    # THEN it runs daily by default on the MaintainSchedule parameter, with Scheduler's own time as nonce
    assert props["ScheduleExpression"] == {"Ref": "MaintainSchedule"}
    assert template["Parameters"]["MaintainSchedule"]["Default"] == "rate(1 day)"
    assert json.loads(props["Input"]) == {"action": "maintain", "scheduled_time": "<aws.scheduler.scheduled-time>"}
    # AND the trigger passes the stack's retention, whose default is the documented erasure time
    assert trigger["Environment"]["Variables"]["VERGER_RETENTION_DAYS"] == {"Ref": "SnapshotRetentionDays"}
    retention = template["Parameters"]["SnapshotRetentionDays"]
    assert retention["Default"] == DEFAULT_RETENTION_DAYS == DEFAULT_RETENTION.days and retention["MinValue"] >= 1


def test_trigger_reserves_at_least_the_queues_maximum_concurrency_unless_told_not_to(template, trigger):
    # GIVEN the function's reserved concurrency and its queue's maximum concurrency
    (event,) = [e for e in trigger["Events"].values() if e["Type"] == "SQS"]
    maximum = event["Properties"]["ScalingConfig"]["MaximumConcurrency"]
    parameter = template["Parameters"]["TriggerReservedConcurrency"]
    # THEN it comes from a parameter whose default covers the queue's consumers (0 means none, for
    # accounts that cannot reserve any)
    assert trigger["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReservesConcurrency", {"Ref": "TriggerReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Conditions"]["ReservesConcurrency"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "TriggerReservedConcurrency"}, 0]}]}
    assert maximum < parameter["Default"] <= parameter["MaxValue"] <= 50


# ---------------------------------------------------------------- IAM, everywhere
def test_no_statement_allows_every_action(resources):
    for owner, found in policy_documents(resources).items():
        for statement in found:
            if statement["Effect"] == "Allow":
                wide = [a for a in as_list(statement["Action"]) if a == "*" or a.endswith(":*")]
                assert not wide, f"{owner} allows {wide}"


def test_wildcard_resources_only_for_actions_without_resource_permissions(resources):
    for owner, found in policy_documents(resources).items():
        for statement in found:
            if statement["Effect"] == "Allow" and "*" in as_list(statement["Resource"]):
                assert set(as_list(statement["Action"])) <= ACTIONS_WITHOUT_RESOURCE_PERMISSIONS, owner


def test_function_uses_its_own_role_so_sam_adds_no_broad_managed_policy(trigger, resources):
    assert trigger["Role"] == {"Fn::GetAtt": ["TriggerRole", "Arn"]}
    assert "Policies" not in trigger
    assert "ManagedPolicyArns" not in resources["TriggerRole"]["Properties"]


def test_lambda_reads_manifests_but_never_a_photo(lambda_statements):
    # GIVEN the trigger's statements  THEN it reads manifests and attempt records (reconciliation),
    # and none lets it read a photo: it never GETs one
    assert resources_of(allowed(lambda_statements, "s3:GetObject")) == {bucket_arn("/manifests/*")}
    for photo in ("/raw/Kiwi/1.jpg", "/inbox/1.jpg"):
        for action in ("s3:GetObject", "s3:GetObjectVersion"):
            assert not grants(lambda_statements, action, bucket_arn(photo)), (action, photo)


def test_lambda_writes_only_manifests_and_deletes_only_attempt_records(lambda_statements):
    writes = [s for s in lambda_statements if s["Effect"] == "Allow"
              and any(a.startswith("s3:") and a != "s3:GetObject" and a != "s3:ListBucket" for a in as_list(s["Action"]))]
    assert {a for s in writes for a in as_list(s["Action"])} == {"s3:PutObject", "s3:DeleteObject"}
    assert resources_of(allowed(lambda_statements, "s3:PutObject")) == {bucket_arn("/manifests/*")}
    assert resources_of(allowed(lambda_statements, "s3:DeleteObject")) == {bucket_arn("/manifests/attempts/*")}


def test_lambda_lists_the_bucket_only_under_manifests_and_reports(lambda_statements):
    # a full recompute and a sweep list the photos in the job, not in the trigger
    (listing,) = allowed(lambda_statements, "s3:ListBucket")
    assert resources_of([listing]) == {bucket_arn()}
    assert sorted(listing["Condition"]["StringLike"]["s3:prefix"]) == ["manifests/*", "warehouse/reports/*"]


def test_lambda_uses_only_the_existing_cluster_or_clusters_tagged_with_its_stack(lambda_statements):
    cluster_arn = "arn:${AWS::Partition}:elasticmapreduce:${AWS::Region}:${AWS::AccountId}:cluster/"
    by_sid = {s["Sid"]: s for s in lambda_statements}
    assert resources_of([by_sid["AddStepsToTheExistingCluster"]]) == {cluster_arn + "${ExistingClusterId}"}
    for sid, key in (("CreateOnlyTaggedClusters", "aws:RequestTag/verger-stack"),
                     ("UseOnlyTheStackClusters", "aws:ResourceTag/verger-stack")):
        assert resources_of([by_sid[sid]]) == {cluster_arn + "*"}
        assert by_sid[sid]["Condition"] == {"StringEquals": {key: {"Ref": "AWS::StackName"}}}
    assert "elasticmapreduce:RunJobFlow" in by_sid["CreateOnlyTaggedClusters"]["Action"]
    assert by_sid["FindTheStackCluster"]["Action"] == "elasticmapreduce:ListClusters"


def test_lambda_passes_only_the_cluster_roles_to_emr(lambda_statements):
    by_sid = {s["Sid"]: s for s in lambda_statements}
    passing = by_sid["PassOnlyTheClusterRolesToEmr"]
    assert resources_of([passing]) == {"${EmrServiceRole.Arn}", "${EmrInstanceRole.Arn}"}
    assert passing["Condition"]["StringEquals"]["iam:PassedToService"] == ["elasticmapreduce.amazonaws.com", "ec2.amazonaws.com"]


def test_lambda_publishes_only_to_its_alert_topic(lambda_statements):
    assert resources_of(allowed(lambda_statements, "sns:Publish")) == {"${AlertTopic}"}


def test_lambda_starts_job_runs_only_on_its_serverless_application(lambda_statements):
    (runs,) = allowed(lambda_statements, "emr-serverless:StartJobRun")
    app = "arn:${AWS::Partition}:emr-serverless:${AWS::Region}:${AWS::AccountId}:/applications/${ServerlessApplication}"
    assert resources_of([runs]) == {app, app + "/jobruns/*"}


def test_lambda_passes_only_the_job_role_and_only_to_emr_serverless(lambda_statements):
    pass_role = next(s for s in allowed(lambda_statements, "iam:PassRole") if s["Sid"] == "PassJobRoleToServerless")
    assert resources_of([pass_role]) == {"${ServerlessJobRole.Arn}"}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}}


JOB_READS = ("raw/", "inbox/", "manifests/", "code/", "models/", "warehouse/", "suggestions/")
JOB_WRITES = ("warehouse/", "suggestions/")


def test_job_reads_its_inputs_and_writes_only_warehouse_and_suggestions(job_statements):
    writes = [s for s in job_statements if s["Effect"] == "Allow"
              and {"s3:PutObject", "s3:DeleteObject"} & set(as_list(s["Action"]))]
    assert resources_of(writes) == {bucket_arn(f"/{p}*") for p in JOB_WRITES}
    assert resources_of(allowed(job_statements, "s3:GetObject")) == {bucket_arn(f"/{p}*") for p in JOB_READS}


def test_job_reads_the_weights_and_every_file_of_a_staged_int8_model(job_statements):
    # GIVEN the objects the job fetches from models/: the weights and an int8 model's folder
    staged = [stage.WEIGHTS_KEY, *(f"{stage.MODELS_PREFIX}int8-0a1b2c3d4e5f/{name}" for name in MODEL_FILES)]
    # THEN the job's policy (on the cluster's nodes and the Serverless job role) lets it read each
    assert all(grants(job_statements, "s3:GetObject", bucket_arn(f"/{key}")) for key in staged)


@pytest.mark.parametrize("action", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"])
def test_job_touches_no_object_outside_its_prefixes_or_bucket(job_statements, action):
    # GIVEN objects outside what the job needs: elsewhere in the bucket, in another bucket
    outside = [bucket_arn("/logs/emr/x"), bucket_arn("/other/x"), "arn:aws:s3:::someone-elses-bucket/x",
               "arn:${AWS::Partition}:s3:::someone-elses-bucket/x"]
    allowed_prefixes = JOB_READS if action == "s3:GetObject" else JOB_WRITES
    # THEN no statement, wildcards included, grants the action on them; and it does on its own prefixes
    assert not [arn for arn in outside if grants(job_statements, action, arn)]
    assert all(grants(job_statements, action, bucket_arn(f"/{p}x")) for p in allowed_prefixes)


def test_job_lists_the_bucket_only_with_a_prefix_condition(job_statements):
    (listing,) = allowed(job_statements, "s3:ListBucket")
    prefixes = listing["Condition"]["StringLike"]["s3:prefix"]
    assert prefixes and all(p.split("/")[0] in {"raw", "inbox", "manifests", "code", "models", "warehouse", "suggestions"} for p in prefixes)


def test_job_glue_access_is_limited_to_the_verger_database(resources, job_statements):
    database = resources["GlueDatabase"]["Properties"]["DatabaseInput"]
    assert database["Name"] == layout.NAMESPACE
    glue = [s for s in job_statements if any(a.startswith("glue:") for a in as_list(s["Action"]))]
    prefix = "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:"
    assert resources_of(glue) == {prefix + "catalog", prefix + "database/${GlueDatabase}", prefix + "table/${GlueDatabase}/*"}
    # and nothing, wildcards included, lets it delete the catalog's tables or database
    destructive = ("glue:DeleteDatabase", "glue:DeleteTable", "glue:BatchDeleteTable", "glue:DeleteTableVersion",
                   "glue:DeletePartition", "glue:UpdateDatabase")
    table = prefix.replace("${AWS::Partition}", "aws") + "table/verger/features"
    assert not [a for a in destructive if grants(glue, a, prefix + "table/${GlueDatabase}/features") or grants(glue, a, table)]


def test_emr_service_role_passes_only_the_instance_role_to_ec2(resources):
    (pass_role,) = allowed(policy_documents(resources)["EmrServiceRole"], "iam:PassRole")
    assert resources_of([pass_role]) == {"${EmrInstanceRole.Arn}"}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_emr_service_role_may_grant_the_disk_key_only_to_aws_resources(resources):
    (grant,) = allowed(policy_documents(resources)["EmrServiceRole"], "kms:CreateGrant")
    assert resources_of([grant]) == {"${ClusterDiskKey.Arn}"}
    assert grant["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


def test_cluster_nodes_get_the_job_policy_and_may_only_add_logs_and_use_the_disk_key(resources):
    role = resources["EmrInstanceRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [{"Ref": "JobDataAccessPolicy"}]
    (policy,) = role["Policies"]
    always = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"] if "Fn::If" not in s}
    assert resources_of([always["UploadClusterLogs"]]) == {bucket_arn("/logs/emr/*")}
    assert always["UploadClusterLogs"]["Action"] == "s3:PutObject"
    assert resources_of([always["EncryptLocalDisksWithTheDiskKey"]]) == {"${ClusterDiskKey.Arn}"}
    assert set(always) == {"UploadClusterLogs", "EncryptLocalDisksWithTheDiskKey"}
    # the rest comes only with the notebook server
    assert {s["Fn::If"][0] for s in policy["PolicyDocument"]["Statement"] if "Fn::If" in s} == {"NotebookOnCluster"}


# ---------------------------------------------------------------- EMR (the cluster itself: tests/unit/functions/test_cluster.py)
def test_no_cluster_is_created_by_the_stack_the_trigger_creates_it(template, resources):
    assert not [r for r in resources.values() if r["Type"] == "AWS::EMR::Cluster"]
    assert "StartCluster" not in template["Parameters"]
    assert template["Conditions"]["OwnCluster"] == {
        "Fn::And": [{"Condition": "UseEmr"}, {"Fn::Equals": [{"Ref": "ExistingClusterId"}, ""]}]}


def test_security_configuration_encrypts_disks_and_traffic_and_requires_imdsv2(resources):
    configuration = resources["ClusterSecurityConfiguration"]["Properties"]["SecurityConfiguration"]
    encryption = configuration["EncryptionConfiguration"]
    assert encryption["EnableAtRestEncryption"] is True and encryption["EnableInTransitEncryption"] is True
    disks = encryption["AtRestEncryptionConfiguration"]["LocalDiskEncryptionConfiguration"]
    assert disks == {"EncryptionKeyProviderType": "AwsKms", "AwsKmsKey": {"Fn::GetAtt": ["ClusterDiskKey", "Arn"]},
                     "EnableEbsEncryption": True}
    tls = encryption["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"]
    assert tls["CertificateProviderType"] == "PEM"
    assert text(tls["S3Object"]) == f"s3://${{BucketName}}/{stage.TLS_CERTIFICATES_KEY}"
    assert configuration["InstanceMetadataServiceConfiguration"]["MinimumInstanceMetadataServiceVersion"] == 2
    assert resources["ClusterDiskKey"]["Properties"]["EnableKeyRotation"] is True


def test_a_private_subnet_gets_its_own_three_security_groups_and_needs_its_vpc(template, resources):
    groups = [n for n, r in resources.items() if r["Type"] == "AWS::EC2::SecurityGroup"]
    assert sorted(groups) == ["ClusterPrimarySecurityGroup", "ClusterServiceAccessSecurityGroup", "ClusterWorkerSecurityGroup"]
    assert all(resources[g]["Condition"] == "PrivateCluster" for g in groups)
    # no group admits traffic from outside: the only extra rule is EMR's 9443 from the primary node
    assert all("SecurityGroupIngress" not in resources[g]["Properties"] for g in groups)
    ingress = resources["ServiceAccessFromPrimary"]["Properties"]
    assert (ingress["FromPort"], ingress["ToPort"], ingress["SourceSecurityGroupId"]) == (
        9443, 9443, {"Ref": "ClusterPrimarySecurityGroup"})
    (assertion,) = template["Rules"]["PrivateSubnetNeedsItsVpc"]["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "VpcId"}, ""]}]}


# ---------------------------------------------------------------- the notebook server (NotebookServer)
NOTEBOOK_PARAMETER_ARN = ("arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
                          "/verger/${AWS::StackName}/notebook-password")
INSTANCES_ARN = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*"


@pytest.fixture(scope="module")
def notebook_node_statements(resources):
    """The cluster nodes' statements that only the notebook server brings."""
    (policy,) = resources["EmrInstanceRole"]["Properties"]["Policies"]
    return [s["Fn::If"][1] for s in policy["PolicyDocument"]["Statement"] if "Fn::If" in s]


def test_the_notebook_server_is_off_unless_asked_for_and_only_on_the_stack_cluster(template, trigger):
    parameter = template["Parameters"]["NotebookServer"]
    assert parameter["Default"] == "none" and parameter["AllowedValues"] == ["none", "jupyterhub"]
    assert template["Conditions"]["NotebookOnCluster"] == {
        "Fn::And": [{"Condition": "OwnCluster"}, {"Fn::Equals": [{"Ref": "NotebookServer"}, "jupyterhub"]}]}
    assert trigger["Environment"]["Variables"]["VERGER_CLUSTER_NOTEBOOK"] == {
        "Fn::If": ["NotebookOnCluster", "jupyterhub", ""]}


def test_cluster_nodes_get_session_manager_minimal_permissions_not_the_broad_managed_policy(resources, notebook_node_statements):
    # GIVEN what the notebook server adds to the nodes' role
    by_sid = {s["Sid"]: s for s in notebook_node_statements}
    # THEN the agent may open its channels and register the instance, and no AWS managed policy
    # (AmazonSSMManagedInstanceCore reads every parameter of the account) is attached
    assert sorted(as_list(by_sid["OpenSessionManagerChannels"]["Action"])) == [
        "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"]
    assert resources_of([by_sid["RegisterWithSessionManager"]]) == {INSTANCES_ARN}
    assert resources["EmrInstanceRole"]["Properties"]["ManagedPolicyArns"] == [{"Ref": "JobDataAccessPolicy"}]
    # AND it writes only the stack's notebook login, and reads none
    assert resources_of(allowed(notebook_node_statements, "ssm:PutParameter")) == {NOTEBOOK_PARAMETER_ARN}
    assert not [s for s in notebook_node_statements if any(a.startswith(("ssm:Get", "ssm:SendCommand", "ssm:*"))
                                                           for a in as_list(s["Action"]))]


def test_the_login_parameter_is_the_one_the_cluster_step_writes(notebook_node_statements):
    from functions.cluster import notebook_password_parameter

    (put,) = allowed(notebook_node_statements, "ssm:PutParameter")
    arn = text(put["Resource"])
    assert arn.endswith(":parameter" + notebook_password_parameter("${AWS::StackName}"))


def test_notebooks_are_kept_only_under_jupyter(notebook_node_statements):
    objects = [s for s in notebook_node_statements if {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} & set(as_list(s["Action"]))]
    assert resources_of(objects) == {bucket_arn("/jupyter/*")}
    (listing,) = allowed(notebook_node_statements, "s3:ListBucket")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["jupyter", "jupyter/*"]}}


def test_notebook_users_may_only_forward_a_port_to_the_stack_cluster_nodes(resources):
    # GIVEN the policy for the people who open the notebook server
    policy = resources["NotebookUserPolicy"]
    assert policy["Condition"] == "NotebookOnCluster"
    found = policy_documents(resources)["NotebookUserPolicy"]
    sessions = allowed(found, "ssm:StartSession")
    # THEN a session may start only on instances tagged with the stack, with the document check on
    # (so no shell document), and the only document is port forwarding
    on_instances = [s for s in sessions if resources_of([s]) == {INSTANCES_ARN}]
    (instances,) = on_instances
    assert instances["Condition"] == {"StringEquals": {"ssm:resourceTag/verger-stack": {"Ref": "AWS::StackName"}},
                                      "BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}
    assert resources_of(sessions) == {INSTANCES_ARN, "arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-StartPortForwardingSession"}
    # AND nothing else reaches into the nodes; they end their own sessions and read only the login
    assert {a for s in found for a in as_list(s["Action"])} == {
        "ec2:DescribeInstances", "ssm:StartSession", "ssm:TerminateSession", "ssm:ResumeSession", "ssm:GetParameter"}
    assert resources_of(allowed(found, "ssm:TerminateSession")) == {
        "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:session/${!aws:userid}-*"}
    assert resources_of(allowed(found, "ssm:GetParameter")) == {NOTEBOOK_PARAMETER_ARN}


def test_no_port_is_opened_to_reach_the_notebook(resources):
    # GIVEN every ingress rule the template declares, inline or as its own resource
    ingress = of_type(resources, "AWS::EC2::SecurityGroupIngress")
    # THEN the only one is EMR's service access from the primary node; none admits anything into the
    # primary node, where JupyterHub listens (9443) and sshd (22): SSM's agent connects outward
    assert list(ingress) == ["ServiceAccessFromPrimary"]
    assert all(rule["Properties"]["GroupId"] != {"Ref": "ClusterPrimarySecurityGroup"} for rule in ingress.values())
    assert all("SecurityGroupIngress" not in group["Properties"] for group in of_type(resources, "AWS::EC2::SecurityGroup").values())


def test_failed_verger_runs_invoke_the_trigger(resources):
    step = resources["FailedStepRule"]["Properties"]
    assert step["EventPattern"]["detail-type"] == ["EMR Step Status Change"]
    assert step["EventPattern"]["detail"] == {"state": ["FAILED", "CANCELLED", "INTERRUPTED"], "name": [{"prefix": "verger-"}]}
    runs = resources["FailedJobRunRule"]["Properties"]
    assert runs["EventPattern"]["detail"] == {"state": ["FAILED", "CANCELLED"], "applicationId": [{"Ref": "ServerlessApplication"}]}
    for rule in ("FailedStepRule", "FailedJobRunRule"):
        (target,) = resources[rule]["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["TriggerFunction", "Arn"]}
        permission = resources[f"{rule}Permission"]["Properties"]
        assert (permission["Principal"], permission["SourceArn"]) == ("events.amazonaws.com", {"Fn::GetAtt": [rule, "Arn"]})


def test_alarms_on_dead_letters_trigger_errors_and_exhausted_batches_tell_the_topic(resources):
    alarms = {n: r["Properties"] for n, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {(a["Namespace"], a["MetricName"]) for a in alarms.values()} == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"), ("AWS/Lambda", "Errors"), ("Verger", "BatchesExhausted")}
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert resources["AlertEmailSubscription"]["Condition"] == "HasAlertEmail"


def test_the_dashboard_is_valid_json_once_substituted(resources):
    body, names = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    rendered = re.sub(r"\$\{[^}]+\}", "x", body)
    titles = {w["properties"]["title"] for w in json.loads(rendered)["widgets"]}
    assert titles == {"Uploads", "Batches", "Images per batch", "Failures", "Queue age and dead letters"}
    assert set(names) == {"Function", "Queue", "DeadLetters"}


# ---------------------------------------------------------------- EMR Serverless
def test_the_application_runs_the_image_given_and_exists_only_once_there_is_one(template, resources):
    app = resources["ServerlessApplication"]
    assert app["Condition"] == "CreateServerlessApplication"
    assert template["Conditions"]["CreateServerlessApplication"] == {
        "Fn::And": [{"Condition": "UseServerless"}, {"Fn::Not": [{"Fn::Equals": [{"Ref": "ImageUri"}, ""]}]}]
    }
    props = app["Properties"]
    assert props["ImageConfiguration"] == {"ImageUri": {"Ref": "ImageUri"}}
    assert props["ReleaseLabel"] == {"Ref": "EmrReleaseLabel"}
    assert props["Architecture"] == "X86_64"  # the image is built for linux/amd64


def test_the_application_starts_with_a_job_and_stops_after_the_idle_parameter(template, resources):
    props = resources["ServerlessApplication"]["Properties"]
    assert props["AutoStartConfiguration"] == {"Enabled": True}
    assert props["AutoStopConfiguration"] == {"Enabled": True, "IdleTimeoutMinutes": {"Ref": "ServerlessIdleTimeoutMinutes"}}
    idle = template["Parameters"]["ServerlessIdleTimeoutMinutes"]
    assert 1 <= idle["MinValue"] <= idle["Default"] <= idle["MaxValue"] <= 10080
    assert set(props["MaximumCapacity"]) == {"Cpu", "Memory", "Disk"}


@pytest.mark.parametrize(("value", "accepted"), [
    ("", True),
    ("123456789012.dkr.ecr.eu-west-3.amazonaws.com/verger-job:emr-7.13.0-6c70b232ea925126", True),
    ("123456789012.dkr.ecr.eu-west-3.amazonaws.com/verger-job@sha256:" + "a" * 64, True),
    ("public.ecr.aws/emr-serverless/spark/emr-7.13.0:latest", False),
    ("123456789012.dkr.ecr.eu-west-3.amazonaws.com/verger-job", False),
])
def test_image_uri_accepts_an_ecr_image_with_tag_or_digest_or_nothing(template, value, accepted):
    assert bool(re.fullmatch(template["Parameters"]["ImageUri"]["AllowedPattern"], value)) is accepted


@pytest.mark.parametrize(("release", "accepted"), [("emr-7.13.0", True), ("emr-7.1.0", True), ("emr-7.0.0", False), ("emr-6.15.0", False)])
def test_release_label_is_one_that_retries_a_failed_serverless_run(template, release, accepted):
    # EMR Serverless supports a job run's retry policy from emr-7.1.0 on
    assert bool(re.fullmatch(template["Parameters"]["EmrReleaseLabel"]["AllowedPattern"], release)) is accepted


def test_the_image_repository_lets_only_emr_serverless_pull_for_this_accounts_applications(resources):
    repository = resources["ImageRepository"]
    assert repository["Condition"] == "UseServerless"
    (statement,) = repository["Properties"]["RepositoryPolicyText"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "emr-serverless.amazonaws.com"}
    assert sorted(statement["Action"]) == ["ecr:BatchGetImage", "ecr:DescribeImages", "ecr:GetDownloadUrlForLayer"]
    assert text(statement["Condition"]["StringLike"]["aws:SourceArn"]) == (
        "arn:${AWS::Partition}:emr-serverless:${AWS::Region}:${AWS::AccountId}:/applications/*")
    assert repository["Properties"]["ImageTagMutability"] == "IMMUTABLE"


def test_serverless_job_role_adds_only_its_own_logs_to_the_job_policy(resources):
    from functions.serverless_job import LOG_PREFIX

    role = resources["ServerlessJobRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [{"Ref": "JobDataAccessPolicy"}]
    extra = policy_documents(resources)["ServerlessJobRole"]
    assert resources_of(extra) == {bucket_arn(f"/{LOG_PREFIX}*")}
    assert {a for s in extra for a in as_list(s["Action"])} == {"s3:PutObject"}
    # and the logs expire with the bucket's logs/ rule
    rules = {r.get("Prefix"): r for r in resources["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert LOG_PREFIX.startswith("logs/") and rules["logs/"]["ExpirationInDays"] == {"Ref": "LogRetentionDays"}


def test_the_trigger_gets_the_application_and_may_start_runs_only_when_it_exists(trigger, resources):
    env = trigger["Environment"]["Variables"]
    assert env["VERGER_EMR_APPLICATION_ID"]["Fn::If"][0] == "CreateServerlessApplication"
    (policy,) = resources["TriggerRole"]["Properties"]["Policies"]
    conditional = {s["Fn::If"][1]["Sid"]: s["Fn::If"][0] for s in policy["PolicyDocument"]["Statement"] if "Fn::If" in s}
    assert conditional["StartRunsOnOwnApplication"] == "CreateServerlessApplication"


# ---------------------------------------------------------------- deployment defaults
def test_default_region_is_paris():
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    assert config["default"]["global"]["parameters"]["region"] == "eu-west-3"
    assert config["default"]["deploy"]["parameters"]["region"] == "eu-west-3"


def test_every_output_is_described(template):
    assert template["Outputs"]
    assert all(output.get("Description") for output in template["Outputs"].values())


def test_stored_resources_carry_the_project_tag(resources):
    for name in ("Bucket", "UploadQueue", "UploadDeadLetterQueue", "ClusterDiskKey", "AlertTopic", "AccessLogBucket", "TriggerRole",
                 "ServerlessApplication", "ImageRepository"):
        tags = resources[name]["Properties"]["Tags"]
        pairs = tags.items() if isinstance(tags, dict) else ((t["Key"], t["Value"]) for t in tags)
        assert ("project", "verger") in set(pairs), name

"""The stack's cluster: one definition, found by exact name, created once under an S3 lease."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from bootstrap import stage
from contract.layout import step_arguments
from functions.cluster import (
    LIVE_CLUSTER_STATES,
    NOTEBOOK_LOGIN_STEP,
    ClusterError,
    ClusterProvider,
    ClusterSpec,
    find_live_cluster,
    notebook_password_parameter,
    run_job_flow_request,
)
from functions.launchers import EmrStepLauncher, launcher_for
from functions.run_events import failure_from_step_event
from functions.serverless_job import JOB_PYTHON
from functions.settings import SettingsError, load_settings

BUCKET = "verger-photos-example"
ARGS = step_arguments(f"s3://{BUCKET}/manifests/incr-1.json", f"s3://{BUCKET}/warehouse", "s3://b/w.h5", 0.95)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def spec(own_cluster_env) -> ClusterSpec:
    return ClusterSpec.from_environ(own_cluster_env)


def test_the_request_is_built_from_what_the_template_passes(spec, own_cluster_env):
    # GIVEN the default deployment's environment (template parameter defaults)
    # WHEN the RunJobFlow request is built
    request = run_job_flow_request(spec)

    # THEN it carries the template's choices and the hardening of issue 15
    assert request["Name"] == own_cluster_env["VERGER_CLUSTER_NAME"] == "verger-verger"
    assert request["ReleaseLabel"] == own_cluster_env["VERGER_CLUSTER_RELEASE"]
    assert request["SecurityConfiguration"] == own_cluster_env["VERGER_CLUSTER_SECURITY_CONFIGURATION"]
    assert (request["ServiceRole"], request["JobFlowRole"]) == ("verger-EmrServiceRole", "verger-EmrInstanceProfile")
    assert request["VisibleToAllUsers"] is False
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    # one step at a time: concurrent steps can commit projections under a PCA version a refit has
    # just replaced (see docs/ARCHITECTURE.md)
    assert request["StepConcurrencyLevel"] == 1
    groups = {group["InstanceRole"]: group for group in request["Instances"]["InstanceGroups"]}
    assert (groups["MASTER"]["InstanceCount"], groups["MASTER"]["Market"]) == (1, "ON_DEMAND")
    assert (groups["CORE"]["InstanceCount"], groups["CORE"]["InstanceType"]) == (2, "m5.xlarge")
    # the default VPC: no subnet, EMR's default security groups
    assert not {"Ec2SubnetId", "EmrManagedMasterSecurityGroup", "ServiceAccessSecurityGroup"} & set(request["Instances"])
    assert {"Key": "verger-stack", "Value": "verger"} in request["Tags"]


def test_a_private_subnet_brings_its_three_security_groups(own_cluster_env):
    # GIVEN a deployment into a private subnet (the template passes the groups it created)
    environ = {**own_cluster_env, "VERGER_CLUSTER_SUBNET": "subnet-1", "VERGER_CLUSTER_MASTER_SG": "sg-m",
               "VERGER_CLUSTER_WORKER_SG": "sg-w", "VERGER_CLUSTER_SERVICE_ACCESS_SG": "sg-s"}
    # WHEN the request is built  THEN the cluster goes into the subnet with exactly those groups
    instances = run_job_flow_request(ClusterSpec.from_environ(environ))["Instances"]
    assert (instances["Ec2SubnetId"], instances["EmrManagedMasterSecurityGroup"],
            instances["EmrManagedSlaveSecurityGroup"], instances["ServiceAccessSecurityGroup"]) == (
        "subnet-1", "sg-m", "sg-w", "sg-s")


def test_the_bootstrap_and_the_spark_python_are_those_staging_and_the_bootstrap_script_provide(spec):
    request = run_job_flow_request(spec)
    (action,) = request["BootstrapActions"]
    assert action["ScriptBootstrapAction"] == {"Path": f"s3://{BUCKET}/{stage.BOOTSTRAP_KEY}",
                                               "Args": [f"s3://{BUCKET}/{stage.CODE_PREFIX}"]}
    venv = re.search(r'VENV="\$\{VERGER_VENV:-([^}]+)\}"', (REPO / "bootstrap" / "emr_bootstrap.sh").read_text()).group(1)
    configurations = {c["Classification"]: c for c in request["Configurations"]}
    (export,) = configurations["spark-env"]["Configurations"]
    defaults = configurations["spark-defaults"]["Properties"]
    for value in (export["Properties"]["PYSPARK_PYTHON"], defaults["spark.pyspark.driver.python"]):
        assert value == f"{venv}/bin/python3.11"
    assert export["Properties"]["PYICEBERG_CATALOG__VERGER__TYPE"] == "glue"
    assert defaults["spark.yarn.appMasterEnv.PYICEBERG_CATALOG__VERGER__TYPE"] == "glue"


def test_emr_accepts_the_request_and_reports_the_definition_back(spec):
    # GIVEN the stack's security configuration (moto checks the request against EMR's API model)
    emr = boto3.client("emr")
    emr.create_security_configuration(Name=spec.security_configuration, SecurityConfiguration="{}")
    # WHEN the cluster is created from the definition
    cluster_id = emr.run_job_flow(**run_job_flow_request(spec))["JobFlowId"]
    # THEN EMR describes it with the same name, release, security configuration and tags
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert (cluster["Name"], cluster["ReleaseLabel"], cluster["SecurityConfiguration"]) == (
        spec.name, spec.release_label, spec.security_configuration)
    assert cluster["VisibleToAllUsers"] is False
    assert {"Key": "verger-stack", "Value": spec.stack} in cluster["Tags"]


def test_a_missing_cluster_variable_is_named(own_cluster_env):
    environ = {**own_cluster_env, "VERGER_CLUSTER_SECURITY_CONFIGURATION": ""}
    with pytest.raises(SettingsError, match="VERGER_CLUSTER_SECURITY_CONFIGURATION is required"):
        ClusterSpec.from_environ(environ)


def test_the_live_cluster_is_found_by_exact_name_over_every_page(aws):
    # GIVEN a cluster with a longer name on page 1 and the stack's cluster on page 2
    emr = boto3.client("emr")
    stubber = Stubber(emr)
    states = list(LIVE_CLUSTER_STATES)
    stubber.add_response("list_clusters", {"Clusters": [{"Id": "j-OTHER", "Name": "verger-verger-old"}], "Marker": "m"},
                         {"ClusterStates": states})
    stubber.add_response("list_clusters", {"Clusters": [{"Id": "j-OURS", "Name": "verger-verger"}]},
                         {"ClusterStates": states, "Marker": "m"})
    # WHEN / THEN the exact name wins, after both pages
    with stubber:
        assert find_live_cluster(emr, "verger-verger") == "j-OURS"


def test_two_live_clusters_with_the_name_are_refused_by_name(aws):
    emr = boto3.client("emr")
    stubber = Stubber(emr)
    stubber.add_response("list_clusters", {"Clusters": [{"Id": "j-A", "Name": "v"}, {"Id": "j-B", "Name": "v"}]})
    with stubber, pytest.raises(ClusterError, match="2 live EMR clusters are named 'v'"):
        find_live_cluster(emr, "v")


def test_two_invocations_at_once_create_one_cluster(spec, bucket):
    # GIVEN no cluster, and eight invocations that look for one at the same moment, on a versioned
    # bucket as the stack's is (unversioned, moto closes an overwritten lease's buffer while another
    # thread may still be reading it: "I/O operation on closed file", which real S3 never does)
    emr, s3 = boto3.client("emr"), boto3.client("s3")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    start = threading.Barrier(8)
    found: list[str] = []
    errors: list[BaseException] = []

    def invoke() -> None:
        provider = ClusterProvider(emr, s3, spec, sleep=lambda _: None, wait_s=30)
        start.wait()
        try:
            found.append(provider.current())
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=invoke) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # THEN exactly one cluster exists and every invocation uses it
    clusters = emr.list_clusters(ClusterStates=list(LIVE_CLUSTER_STATES))["Clusters"]
    assert not errors
    assert len(clusters) == 1
    assert set(found) == {clusters[0]["Id"]}


def test_a_cluster_that_ended_is_replaced_by_the_next_batch(spec, bucket):
    # GIVEN the stack's cluster, created for a first batch, which then ended itself when idle
    emr, s3 = boto3.client("emr"), boto3.client("s3")
    first = ClusterProvider(emr, s3, spec).current()
    emr.terminate_job_flows(JobFlowIds=[first])

    # WHEN the next batch arrives
    launch = EmrStepLauncher(emr, ClusterProvider(emr, s3, spec).current, "s3://b/code/step.py").launch("incr-2", ARGS)

    # THEN a new cluster is created and the step is on it
    second = find_live_cluster(emr, spec.name)
    assert second not in (None, first)
    assert [step["Id"] for step in emr.list_steps(ClusterId=second)["Steps"]] == [launch.run_id]


def test_a_cluster_ending_between_lookup_and_add_costs_one_fresh_lookup(aws):
    # GIVEN a cluster source that hands out j-GONE first, then j-NEW; j-GONE refuses steps
    emr = boto3.client("emr")
    handed: list[str] = []

    def clusters() -> str:
        handed.append("j-GONE" if not handed else "j-NEW")
        return handed[-1]

    stubber = Stubber(emr)
    for cluster_id in ("j-GONE",):
        stubber.add_response("list_steps", {"Steps": []}, {"ClusterId": cluster_id, "StepStates": ["PENDING", "RUNNING", "COMPLETED"]})
    stubber.add_client_error("add_job_flow_steps", "ValidationException",
                             "A job flow that is shutting down, terminated, or finished may not be modified.")
    stubber.add_response("list_steps", {"Steps": []}, {"ClusterId": "j-NEW", "StepStates": ["PENDING", "RUNNING", "COMPLETED"]})
    stubber.add_response("add_job_flow_steps", {"StepIds": ["s-NEW"]})

    # WHEN a batch is launched
    with stubber:
        launch = EmrStepLauncher(emr, clusters, "s3://b/code/step.py").launch("incr-1", ARGS)

    # THEN the step went to the fresh cluster after exactly one more lookup
    assert (launch.submitted, launch.run_id, handed) == (True, "s-NEW", ["j-GONE", "j-NEW"])


def test_other_errors_from_add_job_flow_steps_are_not_retried(aws):
    emr = boto3.client("emr")
    stubber = Stubber(emr)
    stubber.add_response("list_steps", {"Steps": []})
    stubber.add_client_error("add_job_flow_steps", "ThrottlingException", "Rate exceeded")
    with stubber, pytest.raises(ClientError, match="ThrottlingException"):
        EmrStepLauncher(emr, lambda: "j-1", "s3://b/code/step.py").launch("incr-1", ARGS)


def test_the_default_deployment_processes_the_first_upload_without_any_cluster(own_cluster_env):
    # GIVEN the default deployment and no cluster at all
    from functions import clients

    settings = load_settings(own_cluster_env)
    launcher: Any = launcher_for(settings, clients.client, own_cluster_env)

    # WHEN a batch is launched
    launch = launcher.launch("incr-1", ARGS)

    # THEN the stack's cluster was created and holds the batch's step
    cluster_id = find_live_cluster(boto3.client("emr"), own_cluster_env["VERGER_CLUSTER_NAME"])
    assert cluster_id and launch.submitted
    assert [s["Name"] for s in boto3.client("emr").list_steps(ClusterId=cluster_id)["Steps"]] == ["verger-incr-1-attempt-1"]


# ---------------------------------------------------------------- the notebook server option
@pytest.fixture
def notebook_env(own_cluster_refs, template_environment, bucket) -> dict[str, str]:
    """The deployment with NotebookServer=jupyterhub, rendered from template.yaml."""
    return template_environment({"BucketName": bucket, **own_cluster_refs, "NotebookServer": "jupyterhub"})


def by_classification(request: dict) -> dict[str, dict]:
    return {c["Classification"]: c for c in request["Configurations"]}


def test_the_notebook_option_adds_jupyterhub_the_ssm_agent_the_login_step_and_kernels_on_the_job_python(notebook_env):
    # GIVEN the deployment with the notebook server
    assert notebook_env["VERGER_CLUSTER_NOTEBOOK"] == "jupyterhub"
    request = run_job_flow_request(ClusterSpec.from_environ(notebook_env))
    # THEN JupyterHub comes with Livy, which its Sparkmagic kernels submit to
    assert [a["Name"] for a in request["Applications"]] == ["Spark", "Livy", "JupyterHub"]
    # AND every node runs the SSM agent (the staged script's agent mode), after the job's venv
    notebook_script = f"s3://{BUCKET}/{stage.NOTEBOOK_KEY}"
    assert [a["Name"] for a in request["BootstrapActions"]] == ["verger-python-dependencies", "verger-ssm-agent"]
    assert request["BootstrapActions"][1]["ScriptBootstrapAction"] == {"Path": notebook_script, "Args": ["agent"]}
    # AND the first step replaces the documented default login; its failure spares the cluster
    (step,) = request["Steps"]
    assert step["Name"] == NOTEBOOK_LOGIN_STEP and step["ActionOnFailure"] == "CONTINUE"
    assert step["HadoopJarStep"]["Args"] == [notebook_script, "login", notebook_password_parameter("verger"), "eu-west-3"]
    # AND notebooks persist in the stack's bucket, and kernels' Spark sessions run the job's Python
    # with the job's catalog (the same spark-defaults a batch step gets)
    configurations = by_classification(request)
    assert configurations["jupyter-s3-conf"]["Properties"] == {"s3.persistence.enabled": "true",
                                                              "s3.persistence.bucket": BUCKET}
    session = json.loads(configurations["jupyter-sparkmagic-conf"]["Properties"]["session_configs"])
    assert session["conf"]["spark.pyspark.python"] == session["conf"]["spark.pyspark.driver.python"] == JOB_PYTHON
    assert session["conf"] == configurations["spark-defaults"]["Properties"]
    # AND nothing about the cluster's exposure changes
    assert request["VisibleToAllUsers"] is False and "Ec2KeyName" not in request["Instances"]
    assert not {"AdditionalMasterSecurityGroups", "AdditionalSlaveSecurityGroups"} & set(request["Instances"])


def test_without_the_option_the_cluster_has_none_of_it(spec):
    request = run_job_flow_request(spec)
    assert [a["Name"] for a in request["Applications"]] == ["Spark"]
    assert [a["Name"] for a in request["BootstrapActions"]] == ["verger-python-dependencies"]
    assert "Steps" not in request
    assert set(by_classification(request)) == {"spark-env", "spark-defaults"}


def test_emr_accepts_the_notebook_request_and_runs_the_login_step_first(notebook_env):
    # GIVEN the notebook deployment (moto checks the request against EMR's API model)
    spec = ClusterSpec.from_environ(notebook_env)
    emr = boto3.client("emr")
    emr.create_security_configuration(Name=spec.security_configuration, SecurityConfiguration="{}")
    # WHEN the cluster is created and a batch's step is added
    cluster_id = emr.run_job_flow(**run_job_flow_request(spec))["JobFlowId"]
    launch = EmrStepLauncher(emr, lambda: cluster_id, "s3://b/code/step.py").launch("incr-1", ARGS)
    # THEN EMR lists the login step before the batch, which is still submitted
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert [s["Name"] for s in reversed(steps)] == [NOTEBOOK_LOGIN_STEP, "verger-incr-1-attempt-1"]
    assert launch.submitted
    applications = {a["Name"] for a in emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Applications"]}
    assert {"Spark", "Livy", "JupyterHub"} <= applications


def test_a_failed_login_step_is_not_taken_for_a_failed_batch(load_event):
    # GIVEN EventBridge's event for the notebook login step failing
    event = load_event("emr-step-failed.json")
    event["detail"]["name"] = NOTEBOOK_LOGIN_STEP
    # THEN no batch is retried or alerted about
    assert failure_from_step_event(event) is None


def test_an_unknown_notebook_server_is_named(own_cluster_env):
    with pytest.raises(SettingsError, match="VERGER_CLUSTER_NOTEBOOK='zeppelin'"):
        ClusterSpec.from_environ({**own_cluster_env, "VERGER_CLUSTER_NOTEBOOK": "zeppelin"})


def test_an_existing_cluster_gets_no_notebook_setting(template_environment, bucket):
    # the option only shapes the cluster the stack creates
    environment = template_environment({"BucketName": bucket, "ExistingClusterId": "j-1", "NotebookServer": "jupyterhub"})
    assert environment["VERGER_CLUSTER_NOTEBOOK"] == ""

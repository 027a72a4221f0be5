"""The stack's EMR cluster: its one definition, finding the live one, and creating one under a lease.

The template creates no cluster: the trigger creates one when work arrives (and it ends itself
when idle), from `run_job_flow_request`, the only copy of the cluster's definition. The template
supplies what varies per deployment (roles, release, sizes, subnet, security configuration and
groups, the optional notebook server) through the function's environment; `ClusterSpec` reads it.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from functions.batching import CONDITION_FAILED
from functions.serverless_job import JOB_PYTHON, catalog_environment
from functions.settings import SettingsError

# Clusters that take steps, or will: an ending cluster (TERMINATING) accepts none.
LIVE_CLUSTER_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
LEASE_KEY = "manifests/leases/cluster.json"
# A lease older than this without a cluster id belongs to an invocation that died mid-creation.
LEASE_TTL = timedelta(minutes=2)
LEASE_POLL_S = 2.0
EXPIRED = datetime(2000, 1, 1, tzinfo=timezone.utc).isoformat()
STACK_TAG = "verger-stack"
# The notebook server the template's NotebookServer parameter can add (see `notebook_additions`).
NOTEBOOK_SERVERS = ("jupyterhub",)
JUPYTERHUB_PORT = 9443
NOTEBOOK_SCRIPT = "emr_notebook.sh"
NOTEBOOK_LOGIN_STEP = "notebook-login"  # not "verger-…": the failed-step rule retries only batches

logger = Logger(child=True)


class ClusterError(RuntimeError):
    """No usable cluster: more than one live cluster carries the name, or creation timed out."""


@dataclass(frozen=True)
class ClusterSpec:
    """What the template decides about the cluster; the shape of the request is decided here."""

    name: str
    stack: str
    bucket: str
    region: str
    release_label: str
    instance_type: str
    core_count: int
    core_market: str
    idle_timeout_s: int
    service_role: str
    instance_profile: str
    security_configuration: str
    subnet_id: str | None = None
    master_security_group: str | None = None
    worker_security_group: str | None = None
    service_access_security_group: str | None = None
    notebook_server: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ClusterSpec:
        """Read `VERGER_CLUSTER_*` (set by template.yaml), naming the first missing variable."""

        def get(name: str, required: bool = True) -> str | None:
            value = environ.get(f"VERGER_CLUSTER_{name}", "").strip()
            if required and not value:
                raise SettingsError(f"VERGER_CLUSTER_{name} is required to create the stack's EMR cluster")
            return value or None

        notebook = get("NOTEBOOK", required=False)
        if notebook and notebook not in NOTEBOOK_SERVERS:
            raise SettingsError(f"VERGER_CLUSTER_NOTEBOOK={notebook!r}: expected empty or one of {', '.join(NOTEBOOK_SERVERS)}")
        try:
            core_count, idle = int(str(get("CORE_COUNT"))), int(str(get("IDLE_TIMEOUT")))
        except ValueError:
            raise SettingsError("VERGER_CLUSTER_CORE_COUNT and VERGER_CLUSTER_IDLE_TIMEOUT must be integers") from None
        return cls(
            name=str(get("NAME")), stack=str(get("STACK")), bucket=str(environ.get("VERGER_BUCKET")),
            region=str(get("REGION")), release_label=str(get("RELEASE")),
            instance_type=str(get("INSTANCE_TYPE")), core_count=core_count,
            core_market=str(get("CORE_MARKET")), idle_timeout_s=idle,
            service_role=str(get("SERVICE_ROLE")), instance_profile=str(get("INSTANCE_PROFILE")),
            security_configuration=str(get("SECURITY_CONFIGURATION")),
            subnet_id=get("SUBNET", required=False),
            master_security_group=get("MASTER_SG", required=False),
            worker_security_group=get("WORKER_SG", required=False),
            service_access_security_group=get("SERVICE_ACCESS_SG", required=False),
            notebook_server=notebook,
        )


def run_job_flow_request(spec: ClusterSpec) -> dict[str, Any]:
    """The `RunJobFlow` request for the stack's cluster: the single cluster definition.

    Three nodes by default, Spot optional for core nodes only (the primary must not vanish),
    steps one at a time (a second Spark job on three nodes would only halve the first), the
    bootstrap action that builds the job's Python 3.11 venv, and an idle auto-termination policy
    so that a cluster costs nothing once the work is done. With a notebook server, also what
    `notebook_additions` adds.
    """
    code = f"s3://{spec.bucket}/code/"
    instances: dict[str, Any] = {
        "InstanceGroups": [
            {"Name": "primary", "InstanceRole": "MASTER", "Market": "ON_DEMAND",
             "InstanceType": spec.instance_type, "InstanceCount": 1},
            {"Name": "core", "InstanceRole": "CORE", "Market": spec.core_market,
             "InstanceType": spec.instance_type, "InstanceCount": spec.core_count},
        ],
        "KeepJobFlowAliveWhenNoSteps": True,
        "TerminationProtected": False,
    }
    if spec.subnet_id:
        instances["Ec2SubnetId"] = spec.subnet_id
    for field_name, value in (("EmrManagedMasterSecurityGroup", spec.master_security_group),
                              ("EmrManagedSlaveSecurityGroup", spec.worker_security_group),
                              ("ServiceAccessSecurityGroup", spec.service_access_security_group)):
        if value:
            instances[field_name] = value
    request: dict[str, Any] = {
        "Name": spec.name,
        "ReleaseLabel": spec.release_label,
        "Applications": [{"Name": "Spark"}],
        "ServiceRole": spec.service_role,
        "JobFlowRole": spec.instance_profile,
        "SecurityConfiguration": spec.security_configuration,
        "LogUri": f"s3://{spec.bucket}/logs/emr/",
        "VisibleToAllUsers": False,
        "StepConcurrencyLevel": 1,
        "AutoTerminationPolicy": {"IdleTimeout": spec.idle_timeout_s},
        "Instances": instances,
        "BootstrapActions": [
            {"Name": "verger-python-dependencies",
             "ScriptBootstrapAction": {"Path": f"{code}emr_bootstrap.sh", "Args": [code]}},
        ],
        "Configurations": spark_configurations(spec.region),
        "Tags": [
            {"Key": "project", "Value": "verger"},
            {"Key": STACK_TAG, "Value": spec.stack},
            # AmazonEMRServicePolicy_v2 only manages EC2 resources carrying this tag.
            {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"},
        ],
    }
    if spec.notebook_server:
        for field_name, added in notebook_additions(spec).items():
            request[field_name] = [*request.get(field_name, []), *added]
    return request


def notebook_password_parameter(stack: str) -> str:
    """The SecureString parameter holding the notebook login of the stack's current cluster."""
    return f"/verger/{stack}/notebook-password"


def notebook_additions(spec: ClusterSpec) -> dict[str, list[dict[str, Any]]]:
    """What the notebook server adds to the cluster: JupyterHub (with Livy, which its Sparkmagic
    kernels talk to), the SSM agent for port forwarding, a login nobody else knows, and kernels
    whose Spark sessions run the job's Python with the job's catalog.

    No port is opened: users reach 9443 on the primary node through an SSM port-forwarding
    session (`verger notebook`), which the agent makes from the inside.
    """
    code = f"s3://{spec.bucket}/code/"
    script = f"{code}{NOTEBOOK_SCRIPT}"
    return {
        "Applications": [{"Name": "Livy"}, {"Name": "JupyterHub"}],
        "BootstrapActions": [
            {"Name": "verger-ssm-agent", "ScriptBootstrapAction": {"Path": script, "Args": ["agent"]}},
        ],
        "Steps": [{
            "Name": NOTEBOOK_LOGIN_STEP,
            # A notebook that cannot start must not cost the batches their cluster.
            "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {
                "Jar": f"s3://{spec.region}.elasticmapreduce/libs/script-runner/script-runner.jar",
                "Args": [script, "login", notebook_password_parameter(spec.stack), spec.region],
            },
        }],
        "Configurations": [
            # Notebooks outlive the cluster (it ends itself when idle): saved under jupyter/<user>/.
            {"Classification": "jupyter-s3-conf", "Properties": {
                "s3.persistence.enabled": "true", "s3.persistence.bucket": spec.bucket}},
            # Sparkmagic's config.json takes nested values as JSON text.
            {"Classification": "jupyter-sparkmagic-conf", "Properties": {
                "session_configs": json.dumps({"conf": spark_defaults(spec.region)}, sort_keys=True)}},
        ],
    }


def spark_configurations(region: str) -> list[dict[str, Any]]:
    """Driver and executors run in the bootstrap's venv; pyiceberg finds the Glue catalog.

    In cluster deploy mode the driver runs in a YARN container, which does not read spark-env.sh:
    the same settings go to the application master and executors through spark-defaults.
    """
    catalog = catalog_environment(region)
    return [
        {"Classification": "spark-env", "Configurations": [
            {"Classification": "export", "Properties": {
                "PYSPARK_PYTHON": JOB_PYTHON, "PYSPARK_DRIVER_PYTHON": JOB_PYTHON, **catalog}},
        ]},
        {"Classification": "spark-defaults", "Properties": spark_defaults(region)},
    ]


def spark_defaults(region: str) -> dict[str, str]:
    """The job's Python and catalog for a YARN driver (steps, and Livy's notebook sessions alike)."""
    return {
        "spark.pyspark.python": JOB_PYTHON,
        "spark.pyspark.driver.python": JOB_PYTHON,
        **{f"spark.yarn.appMasterEnv.{name}": value for name, value in catalog_environment(region).items()},
        "spark.executorEnv.AWS_DEFAULT_REGION": region,
    }


def find_live_cluster(emr: Any, name: str) -> str | None:
    """The id of the one live cluster with exactly this name, over every page; None if none.

    Raises
    ------
    ClusterError
        When two live clusters share the name: submitting to either would be a guess.
    """
    paginator = emr.get_paginator("list_clusters")
    found = [
        cluster["Id"]
        for page in paginator.paginate(ClusterStates=list(LIVE_CLUSTER_STATES))
        for cluster in page["Clusters"]
        if cluster["Name"] == name
    ]
    if len(found) > 1:
        raise ClusterError(f"{len(found)} live EMR clusters are named {name!r} ({', '.join(found)}): terminate the extra ones")
    return found[0] if found else None


def is_live(emr: Any, cluster_id: str) -> bool:
    try:
        state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    except ClientError:
        return False
    return state in LIVE_CLUSTER_STATES


@dataclass
class ClusterProvider:
    """The stack's live cluster, created on demand; two invocations at once create one cluster.

    The lease is one S3 object written conditionally: `If-None-Match: *` when there is none,
    `If-Match: <etag>` to take over a stale one (its cluster ended, or its holder died before
    creating one). Exactly one writer wins; the others wait for the winner's cluster id.
    """

    emr: Any
    s3: Any
    spec: ClusterSpec
    wait_s: float = 60.0
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    sleep: Callable[[float], None] = time.sleep

    def live(self) -> str | None:
        """The live cluster's id, or None: never creates one."""
        return find_live_cluster(self.emr, self.spec.name)

    def current(self) -> str:
        """The live cluster's id, creating the cluster if there is none."""
        deadline = time.monotonic() + self.wait_s
        while True:
            cluster_id = find_live_cluster(self.emr, self.spec.name)
            if cluster_id:
                return cluster_id
            lease, etag = self._read_lease()
            if lease.get("cluster_id") and is_live(self.emr, lease["cluster_id"]):
                return str(lease["cluster_id"])  # listed clusters may lag a fresh RunJobFlow
            if etag is None or self._stale(lease):
                created = self._create_under_lease(etag)
                if created:
                    return created
            if time.monotonic() > deadline:
                raise ClusterError(f"no cluster named {self.spec.name!r} appeared within {self.wait_s:.0f} s")
            self.sleep(LEASE_POLL_S)

    def _stale(self, lease: Mapping[str, Any]) -> bool:
        if lease.get("cluster_id"):
            return True  # it names a cluster that is not live any more
        claimed = datetime.fromisoformat(str(lease.get("claimed_at")))
        return self.clock() - claimed > LEASE_TTL

    def _create_under_lease(self, etag: str | None) -> str | None:
        holder = uuid.uuid4().hex
        claim = {"holder": holder, "claimed_at": self.clock().isoformat()}
        new_etag = self._write_lease(claim, if_none_match=etag is None, if_match=etag)
        if new_etag is None:
            return None  # another invocation won the lease: wait for its cluster
        try:
            cluster_id = self.emr.run_job_flow(**run_job_flow_request(self.spec))["JobFlowId"]
        except BaseException:
            # Hand the lease back at once (an expired claim), so that the next caller need not wait.
            self._write_lease({"holder": holder, "claimed_at": EXPIRED}, if_none_match=False, if_match=new_etag)
            raise
        logger.info("created EMR cluster", extra={"cluster_id": cluster_id, "cluster_name": self.spec.name})
        self._write_lease({**claim, "cluster_id": cluster_id}, if_none_match=False, if_match=new_etag)
        return str(cluster_id)

    def _read_lease(self) -> tuple[dict[str, Any], str | None]:
        try:
            response = self.s3.get_object(Bucket=self.spec.bucket, Key=LEASE_KEY)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return {}, None
            raise
        return json.loads(response["Body"].read()), response["ETag"]

    def _write_lease(self, body: Mapping[str, Any], if_none_match: bool, if_match: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": str(if_match)}
        try:
            response = self.s3.put_object(
                Bucket=self.spec.bucket, Key=LEASE_KEY, Body=json.dumps(body).encode(),
                ContentType="application/json", **condition,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in CONDITION_FAILED:
                return None
            raise
        return str(response["ETag"])

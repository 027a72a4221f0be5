"""Start the job for one manifest: an EMR step, an EMR Serverless job run, or local spark-submit.

Each launcher is idempotent per batch id, because SQS delivers at least once and a failed batch
is retried whole: a replay must never start the same batch twice.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import urlparse

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from contract.layout import REPORTS_DIR, warehouse_path
from functions.serverless_job import job_run_request
from functions.cluster import ClusterProvider, ClusterSpec
from functions.settings import Settings, SettingsError

# A step in one of these states has run, or will: adding it again would redo the batch. FAILED,
# CANCELLED, INTERRUPTED and CANCEL_PENDING are left out on purpose, so that a replay of a batch
# whose step died submits it again (SQS redelivery and DLQ redrive then mean a real retry).
LIVE_OR_DONE_STEP_STATES = ("PENDING", "RUNNING", "COMPLETED")
STDERR_TAIL_LINES = 40

logger = Logger(child=True)


class LaunchError(RuntimeError):
    """The job could not be started, or (locally) ran and failed."""


@dataclass(frozen=True)
class Launch:
    """What a launcher did with one batch: `submitted` is False for a skipped duplicate."""

    batch_id: str
    submitted: bool
    run_id: str | None = None


class Launcher(Protocol):
    def launch(self, batch_id: str, step_args: list[str], attempt: int = 1) -> Launch: ...

    def live_batches(self) -> set[str]:
        """Batch ids with a run that is queued or running now (reconciliation leaves them alone)."""
        ...


ATTEMPT_SEPARATOR = "-attempt-"
_RUN_NAME = re.compile(rf"^verger-(?P<batch_id>[a-z]{{4}}-[0-9a-f]+){ATTEMPT_SEPARATOR}(?P<attempt>[0-9]+)$")


def step_name(batch_id: str, attempt: int = 1) -> str:
    """The step's (or job run's) name: the batch and the attempt, both visible in the console."""
    return f"verger-{batch_id}{ATTEMPT_SEPARATOR}{attempt}"


def parse_run_name(name: str) -> tuple[str, int] | None:
    """(batch id, attempt) from a name `step_name` made; None for anyone else's step.

    Examples
    --------
    >>> parse_run_name("verger-incr-0a1b-attempt-2"), parse_run_name("CustomJAR")
    (('incr-0a1b', 2), None)
    """
    match = _RUN_NAME.match(name)
    return (match["batch_id"], int(match["attempt"])) if match else None


@dataclass
class EmrStepLauncher:
    """Adds a `spark-submit` step to the stack's EMR cluster, creating the cluster if needed.

    AddJobFlowSteps has no idempotency token, so the cluster's steps are listed (once per
    invocation, then kept up to date locally) and a batch attempt whose step exists is skipped.
    A cluster that ended between the lookup and AddJobFlowSteps costs one fresh lookup (which
    creates a cluster when needed), not a failed batch. Cluster deploy mode runs the driver in a
    YARN container on a core node, so many queued steps do not crowd the primary node.
    """

    emr: Any
    clusters: Callable[[], str]
    entrypoint: str
    live_cluster: Callable[[], str | None] = lambda: None
    _cluster_id: str | None = field(default=None, init=False, repr=False)
    _existing: set[str] | None = field(default=None, init=False, repr=False)

    def launch(self, batch_id: str, step_args: list[str], attempt: int = 1) -> Launch:
        name = step_name(batch_id, attempt)
        if name in self._existing_step_names():
            logger.info("step already on the cluster; skipped", extra={"step_name": name})
            return Launch(batch_id, submitted=False)
        try:
            step_id = self._add_step(name, step_args)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ValidationException":
                raise
            logger.warning("cluster ended before the step was added; looking again",
                           extra={"cluster_id": self._cluster_id, "error": str(error)})
            self._cluster_id, self._existing = None, None
            if name in self._existing_step_names():
                return Launch(batch_id, submitted=False)
            step_id = self._add_step(name, step_args)
        self._existing_step_names().add(name)
        return Launch(batch_id, submitted=True, run_id=step_id)

    def live_batches(self) -> set[str]:
        """Batches with a pending or running step; no live cluster means none (and creates none)."""
        cluster_id = self._cluster_id or self.live_cluster()
        if cluster_id is None:
            return set()
        paginator = self.emr.get_paginator("list_steps")
        pages = paginator.paginate(ClusterId=cluster_id, StepStates=["PENDING", "RUNNING"])
        parsed = (parse_run_name(step["Name"]) for page in pages for step in page["Steps"])
        return {found[0] for found in parsed if found}

    def cluster_id(self) -> str:
        if self._cluster_id is None:
            self._cluster_id = self.clusters()
        return self._cluster_id

    def _add_step(self, name: str, step_args: list[str]) -> str:
        response = self.emr.add_job_flow_steps(
            JobFlowId=self.cluster_id(),
            Steps=[
                {
                    "Name": name,
                    "ActionOnFailure": "CONTINUE",
                    "HadoopJarStep": {
                        "Jar": "command-runner.jar",
                        "Args": [
                            "spark-submit", "--deploy-mode", "cluster", self.entrypoint, *step_args
                        ],
                    },
                }
            ],
        )
        return str(response["StepIds"][0])

    def _existing_step_names(self) -> set[str]:
        if self._existing is None:
            paginator = self.emr.get_paginator("list_steps")
            pages = paginator.paginate(
                ClusterId=self.cluster_id(), StepStates=list(LIVE_OR_DONE_STEP_STATES)
            )
            self._existing = {step["Name"] for page in pages for step in page["Steps"]}
        return self._existing


# Job runs in these states will still run: reconciliation leaves their batches alone.
LIVE_JOB_RUN_STATES = ("SUBMITTED", "PENDING", "SCHEDULED", "RUNNING", "QUEUED")


@dataclass
class EmrServerlessLauncher:
    """Starts a job run; batch id and attempt form the client token, so EMR Serverless drops a
    replay of the same attempt while a retry (next attempt) is a new run.

    The run carries what a cluster gets from its configurations (functions.serverless_job), and
    writes its logs under the bucket's `logs/`.
    """

    emr_serverless: Any
    application_id: str
    execution_role_arn: str
    entrypoint: str
    bucket: str

    def launch(self, batch_id: str, step_args: list[str], attempt: int = 1) -> Launch:
        body = job_run_request(self.emr_serverless.meta.region_name, self.bucket)
        response = self.emr_serverless.start_job_run(
            applicationId=self.application_id,
            executionRoleArn=self.execution_role_arn,
            clientToken=f"{batch_id}{ATTEMPT_SEPARATOR}{attempt}",
            name=step_name(batch_id, attempt),
            jobDriver={
                "sparkSubmit": {
                    "entryPoint": self.entrypoint,
                    "entryPointArguments": step_args,
                    "sparkSubmitParameters": body["sparkSubmitParameters"],
                }
            },
            configurationOverrides=body["configurationOverrides"],
            retryPolicy=body["retryPolicy"],
        )
        return Launch(batch_id, submitted=True, run_id=response["jobRunId"])

    def live_batches(self) -> set[str]:
        paginator = self.emr_serverless.get_paginator("list_job_runs")
        pages = paginator.paginate(applicationId=self.application_id, states=list(LIVE_JOB_RUN_STATES))
        parsed = (parse_run_name(run.get("name", "")) for page in pages for run in page["jobRuns"])
        return {found[0] for found in parsed if found}


@dataclass
class LocalSparkLauncher:
    """Runs the job with `spark-submit --master local[*]` and waits: the one-machine mode.

    A batch whose report is already in the (local) warehouse has been committed and is skipped.
    """

    spark_submit: str
    entrypoint: str
    warehouse_dir: Path

    def launch(self, batch_id: str, step_args: list[str], attempt: int = 1) -> Launch:
        report = Path(warehouse_path(str(self.warehouse_dir), REPORTS_DIR, f"{batch_id}.json"))
        if report.exists():
            logger.info("batch report exists; skipped", extra={"report": str(report)})
            return Launch(batch_id, submitted=False)
        command = [self.spark_submit, "--master", "local[*]", self.entrypoint, *step_args]
        try:
            finished = subprocess.run(command, stderr=subprocess.PIPE, text=True, check=False)
        except OSError as error:
            raise LaunchError(f"cannot run {self.spark_submit!r}: {error}") from None
        if finished.returncode != 0:
            tail = "\n".join(finished.stderr.splitlines()[-STDERR_TAIL_LINES:])
            raise LaunchError(
                f"spark-submit exited with {finished.returncode} for batch {batch_id}:\n{tail}"
            )
        return Launch(batch_id, submitted=True)

    def live_batches(self) -> set[str]:
        return set()  # spark-submit runs to the end inside `launch`


def local_warehouse_dir(warehouse_uri: str) -> Path:
    """The directory behind a local warehouse URI (a path or `file://`); refuses `s3://`."""
    parsed = urlparse(warehouse_uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme:
        raise SettingsError(
            f"VERGER_WAREHOUSE_URI={warehouse_uri!r}: the local launcher needs a local directory"
        )
    return Path(warehouse_uri)


def launcher_for(
    settings: Settings, client: Callable[[str], Any], environ: Mapping[str, str] | None = None
) -> Launcher:
    """The launcher `VERGER_LAUNCHER` names, given a factory of boto3 clients by service name.

    On EMR without `VERGER_EMR_CLUSTER_ID`, the stack's own cluster is found or created from the
    `VERGER_CLUSTER_*` variables of `environ`.
    """
    environ = os.environ if environ is None else environ
    if settings.launcher == "emr-serverless":
        return EmrServerlessLauncher(
            client("emr-serverless"),
            application_id=str(settings.emr_application_id),
            execution_role_arn=str(settings.emr_job_role_arn),
            entrypoint=settings.job_entrypoint,
            bucket=settings.bucket,
        )
    if settings.launcher == "local":
        return LocalSparkLauncher(
            settings.spark_submit,
            entrypoint=settings.job_entrypoint,
            warehouse_dir=local_warehouse_dir(settings.warehouse_uri),
        )
    emr = client("emr")
    if settings.emr_cluster_id:
        existing = str(settings.emr_cluster_id)
        return EmrStepLauncher(emr, clusters=lambda: existing, entrypoint=settings.job_entrypoint,
                               live_cluster=lambda: existing)
    provider = ClusterProvider(emr, client("s3"), ClusterSpec.from_environ(environ))
    return EmrStepLauncher(emr, clusters=provider.current, entrypoint=settings.job_entrypoint,
                           live_cluster=provider.live)

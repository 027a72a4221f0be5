"""Start the job for one manifest: an EMR step, an EMR Serverless job run, or local spark-submit.

Each launcher is idempotent per batch id, because SQS delivers at least once and a failed batch
is retried whole: a replay must never start the same batch twice.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import urlparse

from aws_lambda_powertools import Logger

from contract.layout import REPORTS_DIR, warehouse_path
from functions.serverless_job import job_run_request
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
    def launch(self, batch_id: str, step_args: list[str]) -> Launch: ...


def step_name(batch_id: str) -> str:
    return f"verger-{batch_id}"


@dataclass
class EmrStepLauncher:
    """Adds a `spark-submit` step to a running EMR on EC2 cluster.

    AddJobFlowSteps has no idempotency token, so the cluster's steps are listed (once per
    invocation, then kept up to date locally) and a batch whose step exists is skipped. Cluster
    deploy mode runs the driver in a YARN container on a core node, so many queued steps do not
    crowd the primary node; EMR fetches an `s3://` entry script itself in either mode.
    """

    emr: Any
    cluster_id: str
    entrypoint: str
    _existing: set[str] | None = field(default=None, init=False, repr=False)

    def launch(self, batch_id: str, step_args: list[str]) -> Launch:
        name = step_name(batch_id)
        if name in self._existing_step_names():
            logger.info("step already on the cluster; skipped", extra={"step_name": name})
            return Launch(batch_id, submitted=False)
        response = self.emr.add_job_flow_steps(
            JobFlowId=self.cluster_id,
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
        self._existing_step_names().add(name)
        return Launch(batch_id, submitted=True, run_id=response["StepIds"][0])

    def _existing_step_names(self) -> set[str]:
        if self._existing is None:
            paginator = self.emr.get_paginator("list_steps")
            pages = paginator.paginate(
                ClusterId=self.cluster_id, StepStates=list(LIVE_OR_DONE_STEP_STATES)
            )
            self._existing = {step["Name"] for page in pages for step in page["Steps"]}
        return self._existing


@dataclass
class EmrServerlessLauncher:
    """Starts a job run; the batch id is the client token, so EMR Serverless drops a replay.

    The run carries what a cluster gets from its configurations (functions.serverless_job), and
    writes its logs under the bucket's `logs/`.
    """

    emr_serverless: Any
    application_id: str
    execution_role_arn: str
    entrypoint: str
    bucket: str

    def launch(self, batch_id: str, step_args: list[str]) -> Launch:
        body = job_run_request(self.emr_serverless.meta.region_name, self.bucket)
        response = self.emr_serverless.start_job_run(
            applicationId=self.application_id,
            executionRoleArn=self.execution_role_arn,
            clientToken=batch_id,
            name=step_name(batch_id),
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


@dataclass
class LocalSparkLauncher:
    """Runs the job with `spark-submit --master local[*]` and waits: the one-machine mode.

    A batch whose report is already in the (local) warehouse has been committed and is skipped.
    """

    spark_submit: str
    entrypoint: str
    warehouse_dir: Path

    def launch(self, batch_id: str, step_args: list[str]) -> Launch:
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


def launcher_for(settings: Settings, client: Callable[[str], Any]) -> Launcher:
    """The launcher `VERGER_LAUNCHER` names, given a factory of boto3 clients by service name."""
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
    return EmrStepLauncher(client("emr"), cluster_id=str(settings.emr_cluster_id), entrypoint=settings.job_entrypoint)

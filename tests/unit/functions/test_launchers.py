"""Launchers: EMR steps (deduplicated by name), EMR Serverless (client token), local spark-submit."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from contract.layout import step_arguments
from functions.launchers import (
    EmrServerlessLauncher,
    EmrStepLauncher,
    LaunchError,
    LocalSparkLauncher,
    launcher_for,
    local_warehouse_dir,
)
from functions.serverless_job import job_run_request
from functions.settings import Settings, SettingsError

ARGS = step_arguments("s3://b/manifests/incr-1.json", "s3://b/warehouse", "s3://b/w.h5", 0.95)


def test_an_emr_step_runs_spark_submit_in_cluster_mode_with_the_step_arguments(cluster_id):
    # GIVEN a running cluster
    emr = boto3.client("emr")
    launcher = EmrStepLauncher(emr, lambda: cluster_id, "s3://b/code/step.py")

    # WHEN a batch is launched
    launch = launcher.launch("incr-1", ARGS)

    # THEN one step named after the batch carries the command, and does not stop the cluster on failure
    [step] = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert launch.submitted and launch.run_id == step["Id"]
    assert step["Name"] == "verger-incr-1-attempt-1"
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"] == ["spark-submit", "--deploy-mode", "cluster", "s3://b/code/step.py", *ARGS]


def test_an_emr_step_already_on_the_cluster_is_not_added_again(cluster_id):
    # GIVEN a step for the batch, added by an earlier invocation
    emr = boto3.client("emr")
    EmrStepLauncher(emr, lambda: cluster_id, "s3://b/code/step.py").launch("incr-1", ARGS)

    # WHEN a new invocation (a new launcher) launches the same batch
    launch = EmrStepLauncher(emr, lambda: cluster_id, "s3://b/code/step.py").launch("incr-1", ARGS)

    # THEN it is skipped and the cluster still has one step
    assert not launch.submitted
    assert len(emr.list_steps(ClusterId=cluster_id)["Steps"]) == 1


def test_existing_steps_are_listed_over_every_page_in_live_or_done_states_only(aws):
    # GIVEN a cluster whose matching step is on the second page of list_steps
    emr = boto3.client("emr")
    stubber = Stubber(emr)
    states = ["PENDING", "RUNNING", "COMPLETED"]
    stubber.add_response("list_steps", {"Steps": [{"Name": "verger-other"}], "Marker": "page-2"},
                         {"ClusterId": "j-1", "StepStates": states})
    stubber.add_response("list_steps", {"Steps": [{"Name": "verger-incr-1-attempt-1"}]},
                         {"ClusterId": "j-1", "StepStates": states, "Marker": "page-2"})

    # WHEN the batch is launched
    with stubber:
        launch = EmrStepLauncher(emr, lambda: "j-1", "s3://b/code/step.py").launch("incr-1", ARGS)

    # THEN both pages were read (failed/cancelled steps are not asked for) and no step was added
    assert not launch.submitted
    stubber.assert_no_pending_responses()


def test_emr_serverless_starts_a_job_run_with_the_batch_id_and_attempt_as_client_token(aws):
    # GIVEN an EMR Serverless client in the stack's region
    client = boto3.client("emr-serverless")
    stubber = Stubber(client)
    body = job_run_request("eu-west-3", "b")
    stubber.add_response(
        "start_job_run",
        {"applicationId": "00app", "jobRunId": "00run", "arn": "arn:aws:emr-serverless:eu-west-3:123456789012:/applications/00app/jobruns/00run"},
        {
            "applicationId": "00app",
            "executionRoleArn": "arn:aws:iam::123456789012:role/job",
            "clientToken": "incr-1-attempt-1",
            "name": "verger-incr-1-attempt-1",
            "jobDriver": {"sparkSubmit": {"entryPoint": "s3://b/code/step.py", "entryPointArguments": ARGS,
                                          "sparkSubmitParameters": body["sparkSubmitParameters"]}},
            "configurationOverrides": {"monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": "s3://b/logs/emr-serverless/"}}},
            "retryPolicy": body["retryPolicy"],
        },
    )

    # WHEN a batch is launched
    with stubber:
        launch = EmrServerlessLauncher(client, "00app", "arn:aws:iam::123456789012:role/job", "s3://b/code/step.py", "b").launch("incr-1", ARGS)

    # THEN the request (validated against the service model) matched exactly and the run id comes back
    stubber.assert_no_pending_responses()
    assert launch.run_id == "00run"


def fake_spark_submit(tmp_path: Path, exit_code: int) -> Path:
    """A stand-in for spark-submit that records its arguments and exits with `exit_code`."""
    script = tmp_path / "spark-submit"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "for line in range(100): print(f'log line {line}', file=sys.stderr)\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_the_local_launcher_runs_spark_submit_in_local_mode(tmp_path):
    # GIVEN a spark-submit that succeeds
    launcher = LocalSparkLauncher(str(fake_spark_submit(tmp_path, 0)), "/repo/emr_job/step.py", tmp_path / "wh")

    # WHEN a batch is launched
    launch = launcher.launch("incr-1", ARGS)

    # THEN it ran with --master local[*], the entry script and the step arguments
    assert launch.submitted
    assert json.loads((tmp_path / "argv.json").read_text()) == ["--master", "local[*]", "/repo/emr_job/step.py", *ARGS]


def test_the_local_launcher_raises_with_the_tail_of_stderr_when_the_job_fails(tmp_path):
    # GIVEN a spark-submit that fails after logging 100 lines
    launcher = LocalSparkLauncher(str(fake_spark_submit(tmp_path, 3)), "step.py", tmp_path / "wh")

    # WHEN / THEN launching raises with the exit code and the last lines only
    with pytest.raises(LaunchError, match="exited with 3 for batch incr-1") as raised:
        launcher.launch("incr-1", ARGS)
    assert "log line 99" in str(raised.value)
    assert "log line 10\n" not in str(raised.value)


def test_the_local_launcher_skips_a_batch_whose_report_exists(tmp_path):
    # GIVEN a committed batch (its report is in the warehouse)
    (tmp_path / "wh" / "reports").mkdir(parents=True)
    (tmp_path / "wh" / "reports" / "incr-1.json").write_text("{}")
    launcher = LocalSparkLauncher(str(fake_spark_submit(tmp_path, 0)), "step.py", tmp_path / "wh")

    # WHEN it is launched again
    launch = launcher.launch("incr-1", ARGS)

    # THEN spark-submit never ran
    assert not launch.submitted
    assert not (tmp_path / "argv.json").exists()


def test_a_missing_spark_submit_is_named(tmp_path):
    # GIVEN a spark-submit path that does not exist
    launcher = LocalSparkLauncher(str(tmp_path / "nope"), "step.py", tmp_path / "wh")

    # WHEN / THEN the error names it
    with pytest.raises(LaunchError, match="cannot run .*nope"):
        launcher.launch("incr-1", ARGS)


def test_the_local_launcher_refuses_an_s3_warehouse():
    # GIVEN / WHEN / THEN an s3:// warehouse cannot hold the local reports
    with pytest.raises(SettingsError, match="VERGER_WAREHOUSE_URI='s3://b/warehouse'"):
        local_warehouse_dir("s3://b/warehouse")
    assert local_warehouse_dir("file:///tmp/wh") == Path("/tmp/wh")


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [("emr", EmrStepLauncher), ("emr-serverless", EmrServerlessLauncher), ("local", LocalSparkLauncher)],
)
def test_the_launcher_is_chosen_by_configuration(aws, launcher, expected):
    # GIVEN settings naming a launcher
    settings = Settings(
        bucket="b", launcher=launcher, job_entrypoint="step.py", warehouse_uri="/tmp/wh", weights_uri="w.h5",
        emr_cluster_id="j-1", emr_application_id="00app", emr_job_role_arn="arn:aws:iam::1:role/r",
    )

    # WHEN / THEN that launcher is built
    assert isinstance(launcher_for(settings, boto3.client), expected)

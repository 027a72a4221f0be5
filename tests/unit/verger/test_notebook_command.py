"""`verger notebook` against moto's EC2, SSM and Lambda: it finds the primary node EMR tags, reads
the login the cluster stored, and forwards a port with AWS-StartPortForwardingSession (the session
itself needs AWS and the Session Manager plugin: the command it would run is checked instead)."""
from __future__ import annotations

import io
import json
import shlex
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from moto import mock_aws

from functions.cluster import notebook_password_parameter
from verger.cli import main
from verger.notebook import NotebookNotReady, PrimaryNode, notebook_login, start_cluster, wait_until_ready

STACK = "verger"
PARAMETER = notebook_password_parameter(STACK)


@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def launch_node(stack: str = STACK, role: str = "MASTER") -> str:
    """An instance tagged as EMR tags a cluster's node (the cluster's tags plus its own)."""
    ec2 = boto3.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": "verger-stack", "Value": stack}, {"Key": "aws:elasticmapreduce:instance-group-role", "Value": role}]
    return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                             TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]


def store_login(password: str = "s3cretFromTheStep") -> None:
    boto3.client("ssm").put_parameter(Name=PARAMETER, Type="SecureString", Value=password, Overwrite=True)


def test_the_command_forwards_a_local_port_to_jupyterhub_on_the_primary_node(aws, capsys):
    # GIVEN a running cluster of the stack (a core node and the primary node) whose login step ran
    launch_node(role="CORE")
    primary = launch_node()
    launch_node(stack="other-stack")
    store_login()
    # WHEN a user opens the notebook
    assert main(["notebook", "--stack", STACK, "--local-port", "8443", "--print-command"]) == 0
    # THEN the login is printed, and the command forwards localhost:8443 to 9443 on the primary node
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "JupyterHub: https://localhost:8443  user jovyan  password s3cretFromTheStep"
    command = shlex.split(lines[-1])
    assert command[:5] == ["aws", "ssm", "start-session", "--target", primary]
    assert command[command.index("--document-name") + 1] == "AWS-StartPortForwardingSession"
    assert json.loads(command[command.index("--parameters") + 1]) == {"portNumber": ["9443"], "localPortNumber": ["8443"]}
    assert command[-2:] == ["--region", "eu-west-3"]


def test_without_a_running_cluster_the_command_says_how_to_start_one(aws, capsys):
    launch_node(role="CORE")
    assert main(["notebook", "--stack", STACK]) == 2
    assert f"no cluster of stack {STACK} is running: `verger notebook --stack {STACK} --start`" in capsys.readouterr().err


def test_a_login_stored_by_an_earlier_cluster_is_not_offered(aws):
    # GIVEN a login stored before the current primary node started (by the cluster before it)
    store_login("of-the-last-cluster")
    node = PrimaryNode("i-new", datetime.now(timezone.utc) + timedelta(minutes=5))
    # THEN the user is told the current cluster is still starting, not given a dead password
    with pytest.raises(NotebookNotReady, match="not stored in /verger/verger/notebook-password yet"):
        notebook_login(boto3.client("ssm"), STACK, node)


def test_no_login_at_all_is_explained(aws):
    with pytest.raises(NotebookNotReady, match="deployed without NotebookServer=jupyterhub"):
        notebook_login(boto3.client("ssm"), STACK, PrimaryNode("i-1", datetime.now(timezone.utc)))


def test_waiting_polls_until_the_login_is_stored_then_gives_it(aws):
    # GIVEN a primary node whose login step runs after two polls
    launch_node()
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            store_login("ready")

    node, password = wait_until_ready(boto3.client("ec2"), boto3.client("ssm"), STACK, timeout=600, sleep=sleep)
    assert (password, len(polls)) == ("ready", 2)
    assert node.instance_id


def test_waiting_gives_up_at_the_timeout_saying_what_was_missing(aws):
    ticks = iter(range(0, 10_000, 15))
    with pytest.raises(NotebookNotReady, match="not ready after 60 s: no cluster of stack verger is running"):
        wait_until_ready(boto3.client("ec2"), boto3.client("ssm"), STACK, timeout=60,
                         sleep=lambda _: None, clock=lambda: float(next(ticks)))


class FakeLambda:
    """The trigger's answer to {"action": "start-cluster"} (moto would need Docker to run it)."""

    def __init__(self, payload: dict, function_error: str | None = None) -> None:
        self.payload, self.function_error, self.calls = payload, function_error, []

    def invoke(self, **request):
        self.calls.append(request)
        response = {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(self.payload).encode())}
        return {**response, "FunctionError": self.function_error} if self.function_error else response


def test_start_asks_the_stacks_trigger_for_its_cluster():
    trigger = FakeLambda({"action": "start-cluster", "cluster_id": "j-NEW"})
    assert start_cluster(trigger, STACK) == "j-NEW"
    (call,) = trigger.calls
    assert call["FunctionName"] == "verger-trigger" and json.loads(call["Payload"]) == {"action": "start-cluster"}


def test_a_trigger_that_cannot_start_the_cluster_is_reported_with_its_reason():
    trigger = FakeLambda({"errorMessage": "start-cluster needs Launcher=emr"}, function_error="Unhandled")
    with pytest.raises(ValueError, match="could not start the cluster: start-cluster needs Launcher=emr"):
        start_cluster(trigger, STACK)


def test_the_session_needs_the_plugin_and_says_where_to_get_it(aws, capsys, monkeypatch):
    launch_node()
    store_login()
    monkeypatch.setattr("shutil.which", lambda program: None if program == "session-manager-plugin" else "/usr/bin/aws")
    assert main(["notebook", "--stack", STACK]) == 2
    assert "session-manager-plugin is not on PATH" in capsys.readouterr().err

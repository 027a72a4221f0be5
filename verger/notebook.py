"""`verger notebook`: open the JupyterHub of the stack's cluster through SSM port forwarding.

No SSH key and no open port: the AWS CLI's `ssm start-session` with the
AWS-StartPortForwardingSession document (it needs AWS's Session Manager plugin) forwards a local
port to JupyterHub on the primary node, whose SSM agent connects outward. The login is the random
one the cluster's notebook-login step stored (template parameter NotebookServer=jupyterhub).
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from functions.cluster import JUPYTERHUB_PORT, STACK_TAG, notebook_password_parameter

PRIMARY_ROLE_TAG = "aws:elasticmapreduce:instance-group-role"  # set by EMR on every node
JUPYTERHUB_USER = "jovyan"
POLL_SECONDS = 15.0
PLUGIN_URL = "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html"


class NotebookNotReady(ValueError):
    """No cluster, or its notebook login is not stored yet; the message says what to do."""


@dataclass(frozen=True)
class PrimaryNode:
    instance_id: str
    launched_at: datetime


def add_command(subparsers) -> None:
    notebook = subparsers.add_parser(
        "notebook", help="open JupyterHub on the stack's cluster through SSM port forwarding",
        description="Find the primary node of the stack's cluster, print the notebook login, and forward "
                    "https://localhost:PORT to JupyterHub on it with `aws ssm start-session` (no SSH key, "
                    "no open port). Needs NotebookServer=jupyterhub, the AWS CLI and its Session Manager plugin.",
    )
    notebook.add_argument("--stack", default="verger", help="the stack whose cluster to open (default: verger)")
    notebook.add_argument("--local-port", type=int, default=JUPYTERHUB_PORT, help="local port (default: %(default)s)")
    notebook.add_argument("--start", action="store_true",
                          help="create the cluster if none runs (the trigger's start-cluster action) and wait for it")
    notebook.add_argument("--timeout", type=float, default=1200.0, help="seconds --start waits for the notebook")
    notebook.add_argument("--print-command", action="store_true",
                          help="print the port-forwarding command instead of running it")
    notebook.set_defaults(command=command_notebook)


def command_notebook(args) -> int:
    import boto3

    session = boto3.session.Session()
    ec2, ssm = session.client("ec2"), session.client("ssm")
    if args.start:
        cluster_id = start_cluster(session.client("lambda"), args.stack)
        print(f"cluster {cluster_id}: waiting for its notebook server (about ten minutes from a cold start)")
        node, password = wait_until_ready(ec2, ssm, args.stack, args.timeout)
    else:
        node = primary_node(ec2, args.stack)
        password = notebook_login(ssm, args.stack, node)
    command = port_forwarding_command(node.instance_id, args.local_port, session.region_name)
    print(f"JupyterHub: https://localhost:{args.local_port}  user {JUPYTERHUB_USER}  password {password}")
    print("(the cluster's own TLS certificate: the browser asks to accept it once; Ctrl-C ends the session)")
    if args.print_command:
        print(shlex.join(command))
        return 0
    require_session_manager_plugin()
    return subprocess.run(command, check=False).returncode


def primary_node(ec2: Any, stack: str) -> PrimaryNode:
    """The running primary node of the stack's cluster (EMR copies the cluster's tags to its nodes)."""
    filters = [{"Name": f"tag:{STACK_TAG}", "Values": [stack]},
               {"Name": f"tag:{PRIMARY_ROLE_TAG}", "Values": ["MASTER"]},
               {"Name": "instance-state-name", "Values": ["running"]}]
    found = [instance for page in ec2.get_paginator("describe_instances").paginate(Filters=filters)
             for reservation in page["Reservations"] for instance in reservation["Instances"]]
    if not found:
        raise NotebookNotReady(f"no cluster of stack {stack} is running: `verger notebook --stack {stack} --start` "
                               f"creates one (it ends itself once idle)")
    if len(found) > 1:
        ids = ", ".join(i["InstanceId"] for i in found)
        raise NotebookNotReady(f"{len(found)} primary nodes carry {STACK_TAG}={stack} ({ids}): terminate the extra cluster")
    return PrimaryNode(found[0]["InstanceId"], found[0]["LaunchTime"])


def notebook_login(ssm: Any, stack: str, node: PrimaryNode) -> str:
    """The password the node's cluster stored; one stored for an earlier cluster does not count."""
    name = notebook_password_parameter(stack)
    try:
        parameter = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    except ssm.exceptions.ParameterNotFound:
        parameter = None
    if parameter is None or parameter["LastModifiedDate"] < node.launched_at:
        raise NotebookNotReady(f"the notebook login of {node.instance_id} is not stored in {name} yet: the cluster "
                               f"is still starting (or its notebook-login step failed: see its steps), or the stack "
                               f"was deployed without NotebookServer=jupyterhub")
    return str(parameter["Value"])


def wait_until_ready(ec2: Any, ssm: Any, stack: str, timeout: float, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> tuple[PrimaryNode, str]:
    """Poll until the primary node runs and its login is stored, or say what was missing at the end."""
    deadline = clock() + timeout
    while True:
        try:
            node = primary_node(ec2, stack)
            return node, notebook_login(ssm, stack, node)
        except NotebookNotReady as waiting:
            if clock() >= deadline:
                raise NotebookNotReady(f"not ready after {timeout:g} s: {waiting}") from None
        sleep(POLL_SECONDS)


def start_cluster(lambda_client: Any, stack: str) -> str:
    """Ask the stack's trigger for its cluster (it creates one under its lease if none lives)."""
    response = lambda_client.invoke(FunctionName=f"{stack}-trigger", Payload=json.dumps({"action": "start-cluster"}).encode())
    payload = json.loads(response["Payload"].read() or b"{}")
    if response.get("FunctionError"):
        raise ValueError(f"the trigger of stack {stack} could not start the cluster: {payload.get('errorMessage', payload)}")
    return str(payload["cluster_id"])


def port_forwarding_command(instance_id: str, local_port: int, region: str | None) -> list[str]:
    parameters = {"portNumber": [str(JUPYTERHUB_PORT)], "localPortNumber": [str(local_port)]}
    command = ["aws", "ssm", "start-session", "--target", instance_id,
               "--document-name", "AWS-StartPortForwardingSession", "--parameters", json.dumps(parameters)]
    return [*command, "--region", region] if region else command


def require_session_manager_plugin() -> None:
    for program in ("aws", "session-manager-plugin"):
        if shutil.which(program) is None:
            raise FileNotFoundError(f"{program} is not on PATH: port forwarding needs the AWS CLI and the "
                                    f"Session Manager plugin ({PLUGIN_URL})")

"""Run bootstrap/emr_notebook.sh for real, with test doubles for what only a cluster node has.

Exercised: the argument checks, the SSM agent left alone when it runs and installed and started
when it does not, the login step's random password reaching chpasswd in the container and the
SecureString parameter (and nowhere else), and its clear failure when the container never comes.
Not exercised: Docker, JupyterHub's PAM login, dnf, systemd and the AWS CLI themselves.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bootstrap" / "emr_notebook.sh"
PARAMETER = "/verger/verger/notebook-password"

# Each double logs its argv (one line per call) to $CALLS; docker also saves what it read on stdin,
# aws the --cli-input-json file it was given (the file is gone once the script ends).
DOUBLES = {
    "sudo": 'echo "sudo $*" >>"$CALLS"; exec "$@"',
    "docker": ('echo "docker $*" >>"$CALLS"; [[ -f "$STATE/container" ]] || exit 1; '
               '[[ "$2" == "-i" ]] && cat >"$STATE/chpasswd-stdin"; exit 0'),
    "aws": ('echo "aws $*" >>"$CALLS"; for a in "$@"; do [[ "$a" == file://* ]] && { cp "${a#file://}" "$STATE/parameter.json"; echo "${a#file://}" >"$STATE/secret-path"; }; done; '
            '[[ -f "$STATE/aws-fails" ]] && exit 254; exit 0'),
    "systemctl": 'echo "systemctl $*" >>"$CALLS"; [[ "$1" == is-active ]] && { [[ -f "$STATE/agent-active" ]]; exit; }; exit 0',
    "rpm": 'echo "rpm $*" >>"$CALLS"; [[ -f "$STATE/agent-installed" ]]',
    "dnf": 'echo "dnf $*" >>"$CALLS"',
    "sleep": "exit 0",
}


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A folder of doubles put first on PATH, and the state they read."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, body in DOUBLES.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run(node: Path, *args: str, wait_s: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{node / 'bin'}:{os.environ['PATH']}", "CALLS": str(node / "calls"),
           "STATE": str(node / "state"), "VERGER_NOTEBOOK_WAIT_S": str(wait_s)}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def calls(node: Path) -> list[str]:
    path = node / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_a_running_ssm_agent_is_left_alone(node):
    (node / "state" / "agent-active").touch()
    result = run(node, "agent")
    assert result.returncode == 0, result.stderr
    assert calls(node) == ["systemctl is-active --quiet amazon-ssm-agent"]


def test_a_missing_ssm_agent_is_installed_and_started(node):
    # GIVEN a node whose image lacks the agent
    result = run(node, "agent")
    # THEN it is installed and started at boot, so port forwarding can reach the node
    assert result.returncode == 0, result.stderr
    assert "dnf install -y -q amazon-ssm-agent" in calls(node)
    assert "systemctl enable --now amazon-ssm-agent" in calls(node)


def test_the_login_step_replaces_the_documented_default_password_and_stores_it_secretly(node):
    # GIVEN JupyterHub's container running on the primary node
    (node / "state" / "container").touch()
    # WHEN the login step runs
    result = run(node, "login", PARAMETER, "eu-west-3")
    assert result.returncode == 0, result.stderr
    # THEN jovyan gets a fresh random password inside the container, read by chpasswd on stdin
    user, password = (node / "state" / "chpasswd-stdin").read_text().strip().split(":")
    assert user == "jovyan" and re.fullmatch(r"[A-Za-z0-9]{24}", password) and password != "jupyter"
    assert "sudo docker exec -i jupyterhub chpasswd" in calls(node)
    # AND the same password is stored as the stack's SecureString parameter, replacing the last one
    stored = json.loads((node / "state" / "parameter.json").read_text())
    assert stored == {"Name": PARAMETER, "Type": "SecureString", "Overwrite": True, "Value": password}
    assert not Path((node / "state" / "secret-path").read_text().strip()).exists()
    # AND it appears on no command line and in no output (step logs are uploaded to S3)
    assert not [line for line in calls(node) if password in line]
    assert password not in result.stdout + result.stderr
    assert PARAMETER in result.stdout


def test_each_cluster_draws_its_own_password(node):
    (node / "state" / "container").touch()
    drawn = set()
    for _ in range(2):
        assert run(node, "login", PARAMETER, "eu-west-3").returncode == 0
        drawn.add((node / "state" / "chpasswd-stdin").read_text())
    assert len(drawn) == 2


def test_a_container_that_never_starts_fails_the_step_by_name(node):
    # GIVEN no JupyterHub container  WHEN the login step gives up waiting
    result = run(node, "login", PARAMETER, "eu-west-3", wait_s=0)
    # THEN the step fails, saying why, and stores nothing
    assert result.returncode == 1
    assert "the jupyterhub container did not start within 0 s" in result.stderr
    assert not (node / "state" / "parameter.json").exists()


def test_a_password_that_cannot_be_stored_fails_the_step(node):
    (node / "state" / "container").touch()
    (node / "state" / "aws-fails").touch()
    assert run(node, "login", PARAMETER, "eu-west-3").returncode != 0


@pytest.mark.parametrize("args", [(), ("login",), ("login", PARAMETER), ("shell",)])
def test_wrong_arguments_are_refused_with_the_usage(node, args):
    result = run(node, *args)
    assert result.returncode == 1 and "usage: emr_notebook.sh" in result.stderr

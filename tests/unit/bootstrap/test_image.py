"""python -m bootstrap.image: the build context, the tag, and what it asks Docker and ECR to do.

Docker is a test double here (this machine has no engine): it records its arguments and stdin.
ECR is moto's. Not verified: a real build, the push, or EMR Serverless pulling the image.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from bootstrap import image
from bootstrap.locks import JOB_LOCK
from bootstrap.stage import WEIGHTS_KEY

REGION = "eu-west-3"
REPOSITORY = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/verger-job"

FAKE_DOCKER = """\
#!{python}
import json, os, sys
with open(os.environ["DOCKER_CALLS"], "a") as log:
    log.write(json.dumps({{"args": sys.argv[1:], "stdin": "" if sys.stdin.isatty() else sys.stdin.read(),
                          "buildkit": os.environ.get("DOCKER_BUILDKIT")}}) + "\\n")
sys.exit(int(os.environ.get("DOCKER_INFO_EXIT", "0")) if sys.argv[1:2] == ["info"] else 0)
"""


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "my-weights.h5"
    path.write_bytes(b"weights bytes")
    return path


@pytest.fixture
def docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `docker` on PATH that logs each call to calls.jsonl."""
    bin_dir = tmp_path / "docker-bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CALLS", str(tmp_path / "calls.jsonl"))
    return tmp_path / "calls.jsonl"


@pytest.fixture
def ecr(monkeypatch: pytest.MonkeyPatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("ecr", region_name=REGION)
        client.create_repository(repositoryName="verger-job", imageTagMutability="IMMUTABLE")
        yield client


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def without_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PATH with python but no docker."""
    bin_dir = tmp_path / "no-docker-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))


def test_the_context_holds_exactly_what_the_dockerfile_copies(tmp_path, project, weights):
    # WHEN the context is assembled with the weights
    image.assemble_context(tmp_path / "ctx", weights, project, isolated=False)
    # THEN it holds the Dockerfile, the bootstrap script, the lock, one wheel and the weights under
    # the name the stack stages them with
    names = sorted(str(p.relative_to(tmp_path / "ctx")) for p in (tmp_path / "ctx").rglob("*") if p.is_file())
    (wheel,) = [n for n in names if n.endswith(".whl")]
    assert names == sorted(["Dockerfile", "emr_bootstrap.sh", JOB_LOCK.filename, wheel,
                            f"{image.WEIGHTS_DIR}/{Path(WEIGHTS_KEY).name}"])
    assert wheel.startswith("verger-")
    assert (tmp_path / "ctx" / JOB_LOCK.filename).read_text() == (project / "bootstrap" / JOB_LOCK.filename).read_text()


def test_the_tag_is_stable_across_rebuilds_and_changes_with_the_weights_or_release(tmp_path, project, weights):
    # GIVEN two contexts of the same checkout and weights (two wheel builds), and one with other weights
    for name in ("a", "b"):
        image.assemble_context(tmp_path / name, weights, project, isolated=False)
    other = tmp_path / "other.h5"
    other.write_bytes(b"other weights")
    image.assemble_context(tmp_path / "c", other, project, isolated=False)
    # THEN the same content gives the same tag, and other weights or another release another one
    tag = image.context_tag(tmp_path / "a", "emr-7.13.0")
    assert tag == image.context_tag(tmp_path / "b", "emr-7.13.0")
    assert tag != image.context_tag(tmp_path / "c", "emr-7.13.0")
    assert tag != image.context_tag(tmp_path / "a", "emr-7.12.0")
    assert tag.startswith("emr-7.13.0-")


def test_without_docker_it_says_so_and_touches_nothing(tmp_path, monkeypatch, capsys):
    # GIVEN a machine with no docker on PATH (as this one)
    without_docker(monkeypatch, tmp_path)
    # WHEN the image command runs  THEN it stops with a message naming Docker and the way out, no traceback
    assert image.main(["--repository-uri", REPOSITORY]) == 1
    err = capsys.readouterr().err
    assert "Docker is not available on this machine" in err
    assert "--context-only" in err and "Traceback" not in err


def test_a_docker_whose_engine_does_not_answer_is_named(docker, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_INFO_EXIT", "1")
    assert image.main(["--repository-uri", REPOSITORY]) == 1
    assert "engine does not answer" in capsys.readouterr().err


def test_a_repository_that_is_not_ecr_is_refused_by_name(docker, capsys):
    assert image.main(["--repository-uri", "docker.io/library/python"]) == 1
    assert "'docker.io/library/python' is not an ECR repository URI" in capsys.readouterr().err


def test_it_builds_for_x86_with_the_release_logs_in_with_the_ecr_token_and_pushes(docker, ecr, project, weights, capsys):
    # WHEN the image command runs with Docker and the stack's repository
    code = image.main(["--repository-uri", REPOSITORY, "--weights", str(weights), "--project", str(project),
                       "--no-build-isolation"])
    # THEN it probed the engine, built with BuildKit for linux/amd64 from the release, logged in with
    # the ECR token on stdin (never on the command line), pushed, and printed the parameter value
    assert code == 0, capsys.readouterr().err
    recorded = calls(docker)
    assert [c["args"][0] for c in recorded] == ["info", "build", "login", "push"]
    build, login, push = recorded[1:]
    image_uri = build["args"][build["args"].index("--tag") + 1]
    assert image_uri.startswith(f"{REPOSITORY}:emr-7.13.0-")
    assert ["--platform", "linux/amd64"] == build["args"][1:3] and "EMR_RELEASE=emr-7.13.0" in build["args"]
    assert build["buildkit"] == "1"
    assert login["args"][-1] == REPOSITORY.split("/")[0] and "--password-stdin" in login["args"]
    assert login["stdin"] and login["stdin"] not in " ".join(login["args"])
    assert push["args"] == ["push", image_uri]
    assert f"ImageUri={image_uri}" in capsys.readouterr().out


def test_an_image_already_pushed_for_this_content_is_not_built_again(docker, ecr, project, weights, tmp_path, capsys):
    # GIVEN the repository already holds the tag this checkout and these weights give
    image.assemble_context(tmp_path / "ctx", weights, project, isolated=False)
    tag = image.context_tag(tmp_path / "ctx", image.DEFAULT_RELEASE)
    ecr.put_image(repositoryName="verger-job", imageTag=tag, imageManifest=json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}))
    # WHEN the image command runs
    code = image.main(["--repository-uri", REPOSITORY, "--weights", str(weights), "--project", str(project),
                       "--no-build-isolation"])
    # THEN it builds and pushes nothing, and prints the existing image
    assert code == 0
    assert [c["args"][0] for c in calls(docker)] == ["info"]
    assert f"ImageUri={REPOSITORY}:{tag}" in capsys.readouterr().out


def test_context_only_works_without_docker_and_refuses_a_folder_in_use(tmp_path, project, monkeypatch, capsys):
    # GIVEN no Docker
    without_docker(monkeypatch, tmp_path)
    monkeypatch.setenv("PATH", f"{os.environ['PATH']}{os.pathsep}{Path(sys.executable).parent}")
    # WHEN only the context is asked for  THEN it is assembled (no weights: an empty weights/)
    assert image.main(["--context-only", str(tmp_path / "ctx"), "--project", str(project), "--no-build-isolation"]) == 0
    assert (tmp_path / "ctx" / "Dockerfile").is_file() and not any((tmp_path / "ctx" / image.WEIGHTS_DIR).iterdir())
    # and a second run into the same folder is refused rather than mixing two contexts
    assert image.main(["--context-only", str(tmp_path / "ctx"), "--project", str(project)]) == 1
    assert "is not empty" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "ctx")

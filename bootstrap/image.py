"""Build the EMR Serverless job's image (bootstrap/Dockerfile) and push it to the stack's ECR repository.

    python -m bootstrap.image --repository-uri URI [--weights PATH] [--release emr-7.13.0]
    python -m bootstrap.image --context-only DIR [--weights PATH]

The first form needs a Docker engine (BuildKit) and AWS credentials; without Docker it says so and
stops before any AWS call. The second only assembles the build context (Dockerfile, bootstrap
script, job lock, verger wheel, weights/), for a machine that has Docker:
`DOCKER_BUILDKIT=1 docker build --platform linux/amd64 --build-arg EMR_RELEASE=… DIR`.

The tag is a digest of what goes into the image, so an unchanged checkout finds its image already
pushed, and a changed one gets a new tag (the repository's tags are immutable). The printed
`ImageUri` is the value of the stack's ImageUri parameter. Pass the weights you stage
(`python -m bootstrap.stage --weights`): the image then carries their ONNX conversion.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bootstrap.locks import BOOTSTRAP_DIR, JOB_LOCK, REPO_ROOT
from bootstrap.stage import BOOTSTRAP_SCRIPT, WEIGHTS_KEY, StageError, build_wheel

DOCKERFILE = BOOTSTRAP_DIR / "Dockerfile"
# The EMR release the template's EmrReleaseLabel defaults to (a test keeps them equal).
DEFAULT_RELEASE = "emr-7.13.0"
WEIGHTS_DIR = "weights"
PLATFORM = "linux/amd64"
ECR_URI = re.compile(r"^(?P<registry>(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?)"
                     r"/(?P<name>[a-z0-9._/-]+)$")


class ImageError(RuntimeError):
    """The image cannot be built or pushed here; the message says why and what to do."""


@dataclass(frozen=True)
class Repository:
    registry: str
    region: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> Repository:
        match = ECR_URI.match(uri)
        if not match:
            raise ImageError(f"{uri!r} is not an ECR repository URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME): "
                             "use the stack's output ImageRepositoryUri")
        return cls(match["registry"], match["region"], match["name"])

    @property
    def uri(self) -> str:
        return f"{self.registry}/{self.name}"


def assemble_context(directory: Path, weights: Path | None, project: Path = REPO_ROOT, isolated: bool = True) -> None:
    """Put in `directory` everything the Dockerfile copies or mounts, and nothing else."""
    if weights is not None and not weights.is_file():
        raise ImageError(f"weights file {weights} not found")
    if directory.exists() and any(directory.iterdir()):
        raise ImageError(f"{directory} is not empty: the context must hold only what the image needs")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(DOCKERFILE, directory / DOCKERFILE.name)
    shutil.copy(BOOTSTRAP_SCRIPT, directory / BOOTSTRAP_SCRIPT.name)
    shutil.copy(project / "bootstrap" / JOB_LOCK.filename, directory / JOB_LOCK.filename)
    try:
        build_wheel(project, directory, isolated=isolated)
    except StageError as error:
        raise ImageError(str(error)) from None
    (directory / WEIGHTS_DIR).mkdir()
    if weights is not None:
        shutil.copy(weights, directory / WEIGHTS_DIR / Path(WEIGHTS_KEY).name)


def context_tag(directory: Path, release: str) -> str:
    """Digest of the context's contents and the release: a wheel is read entry by entry, since its
    zip timestamps change with every build while its files do not."""
    digest = hashlib.sha256(release.encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                for name in sorted(wheel.namelist()):
                    digest.update(name.encode() + wheel.read(name))
        else:
            digest.update(path.read_bytes())
    return f"{release}-{digest.hexdigest()[:16]}"


def require_docker() -> str:
    """The docker executable, if its engine answers; otherwise ImageError saying what is missing."""
    docker = shutil.which("docker")
    if docker is None:
        raise ImageError(
            "Docker is not available on this machine (no `docker` on PATH), so the image cannot be built "
            "or pushed here. On a machine with Docker run `make image`; here, `python -m bootstrap.image "
            "--context-only DIR` assembles the build context to copy there."
        )
    probe = subprocess.run([docker, "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        raise ImageError(f"Docker is installed but its engine does not answer (`docker info`: {said}), so the "
                         "image cannot be built here: start the engine, or build where one runs (--context-only DIR)")
    return docker


def already_pushed(ecr, repository: Repository, tag: str) -> bool:
    try:
        ecr.describe_images(repositoryName=repository.name, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        return False
    return True


def run(command: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, input=stdin, text=True, env=env)
    if result.returncode != 0:
        raise ImageError(f"`{' '.join(command[:2])}` failed with exit status {result.returncode}")


def build_and_push(docker: str, ecr, repository: Repository, context: Path, release: str) -> str:
    """Build, log in to the registry and push, unless this content is already there; the image URI."""
    tag = context_tag(context, release)
    image = f"{repository.uri}:{tag}"
    if already_pushed(ecr, repository, tag):
        print(f"{image} is already in the repository: nothing to build")
        return image
    run([docker, "build", "--platform", PLATFORM, "--build-arg", f"EMR_RELEASE={release}", "--tag", image, str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "1"})
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    run([docker, "login", "--username", user, "--password-stdin", repository.registry], stdin=password)
    run([docker, "push", image])
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstrap.image", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--repository-uri", help="the stack's ECR repository (output ImageRepositoryUri)")
    target.add_argument("--context-only", type=Path, metavar="DIR", help="only assemble the build context in DIR")
    parser.add_argument("--weights", type=Path, help="the MobileNetV2 no-top .h5 the stack stages, converted into the image")
    parser.add_argument("--release", default=DEFAULT_RELEASE, help=f"EMR release of the application (default {DEFAULT_RELEASE})")
    parser.add_argument("--project", type=Path, default=REPO_ROOT, help="checkout to build (default: this one)")
    parser.add_argument("--no-build-isolation", action="store_true", help="build the wheel with the current setuptools")
    args = parser.parse_args(argv)
    isolated = not args.no_build_isolation
    try:
        if args.context_only:
            assemble_context(args.context_only, args.weights, args.project, isolated)
            print(f"{args.context_only}: build context, tag {context_tag(args.context_only, args.release)}")
            return 0
        docker = require_docker()
        repository = Repository.parse(args.repository_uri)
        ecr = boto3.client("ecr", region_name=repository.region)
        with tempfile.TemporaryDirectory() as scratch:
            context = Path(scratch) / "context"
            assemble_context(context, args.weights, args.project, isolated)
            image = build_and_push(docker, ecr, repository, context, args.release)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as error:
        print(f"error: cannot reach the ECR repository {args.repository_uri}: {error}", file=sys.stderr)
        return 1
    print(f"ImageUri={image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

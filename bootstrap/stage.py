"""Stage what the cluster needs in the bucket: the job wheel, its entry script, the bootstrap
action with its lock, the notebook server's script, the TLS certificates of its nodes, and the
model weights with their checksum, and the int8 model `verger quantize` made.

    python -m bootstrap.stage --bucket BUCKET [--weights PATH] [--int8-model DIR] [--region eu-west-3]

Run it after `sam deploy` and again after every change to `emr_job/`, `contract/` or
`pyproject.toml`; nodes of a running cluster keep the wheel they bootstrapped with, while
`code/step.py` is read afresh by every step.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from bootstrap.locks import JOB_LOCK, REPO_ROOT
from bootstrap.tls import certificates_zip
from contract.layout import WEIGHTS_CHECKSUM_METADATA

CODE_PREFIX = "code/"
MODELS_PREFIX = "models/"
STEP_KEY = f"{CODE_PREFIX}step.py"
BOOTSTRAP_SCRIPT = Path(__file__).resolve().parent / "emr_bootstrap.sh"
BOOTSTRAP_KEY = f"{CODE_PREFIX}{BOOTSTRAP_SCRIPT.name}"
# Its bootstrap action and login step, which functions/cluster.py adds with NotebookServer.
NOTEBOOK_SCRIPT = BOOTSTRAP_SCRIPT.with_name("emr_notebook.sh")
NOTEBOOK_KEY = f"{CODE_PREFIX}{NOTEBOOK_SCRIPT.name}"
LOCK_KEY = f"{CODE_PREFIX}{JOB_LOCK.filename}"
WHEEL_GLOB_PREFIX = f"{CODE_PREFIX}verger-"
# The zip the stack's EMR security configuration names for in-transit TLS (bootstrap/tls.py).
TLS_CERTIFICATES_KEY = f"{CODE_PREFIX}tls/certificates.zip"
# The key template.yaml passes to the job as VERGER_WEIGHTS_URI, whatever the local file is called.
WEIGHTS_KEY = f"{MODELS_PREFIX}mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# The folder `verger quantize` writes, int8-<model id>: staged as models/<name>/, the template's
# Int8ModelName (whose AllowedPattern is the same).
INT8_MODEL_NAME = re.compile(r"int8-[0-9a-f]{12}")


class StageError(RuntimeError):
    """Something to stage is missing or could not be built; the message names it."""


@dataclass(frozen=True)
class Staged:
    """One uploaded object: its S3 URI and the sha256 of its content."""

    uri: str
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_wheel(project: Path, out_dir: Path, isolated: bool = True) -> Path:
    """Build the project's wheel (no dependencies: the lock carries them) and return its path."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out_dir)]
    if not isolated:
        command.append("--no-build-isolation")
    result = subprocess.run([*command, str(project)], capture_output=True, text=True)
    if result.returncode != 0:
        raise StageError(f"building the wheel of {project} failed:\n{result.stderr.strip()}")
    wheels = sorted(out_dir.glob("verger-*.whl"))
    if len(wheels) != 1:
        raise StageError(f"expected one verger-*.whl from {project}, got {[w.name for w in wheels]}")
    return wheels[0]


def upload(s3, bucket: str, path: Path, key: str, content_type: str | None = None) -> Staged:
    """Upload with the content's sha256 as object metadata, so a node can verify what it fetched."""
    checksum = sha256_of(path)
    extra = {"Metadata": {WEIGHTS_CHECKSUM_METADATA: checksum}}
    if content_type:
        extra["ContentType"] = content_type
    s3.upload_file(str(path), bucket, key, ExtraArgs=extra)
    return Staged(uri=f"s3://{bucket}/{key}", sha256=checksum)


def remove_stale_wheels(s3, bucket: str, keep_key: str) -> list[str]:
    """Delete other verger wheels under code/: the bootstrap action insists on exactly one."""
    stale = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=WHEEL_GLOB_PREFIX):
        stale += [o["Key"] for o in page.get("Contents", []) if o["Key"] != keep_key and o["Key"].endswith(".whl")]
    for key in stale:
        s3.delete_object(Bucket=bucket, Key=key)
    return stale


def stage_code(s3, bucket: str, project: Path = REPO_ROOT, isolated: bool = True) -> list[Staged]:
    """Upload the wheel, `emr_job/step.py`, the bootstrap action, the job lock and the notebook
    script under code/."""
    step = project / "emr_job" / "step.py"
    if not step.is_file():
        raise StageError(f"{step} not found: it is the entry script every step runs")
    lock = project / "bootstrap" / JOB_LOCK.filename
    if not lock.is_file():
        raise StageError(f"{lock} not found: run python -m bootstrap.locks")
    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_wheel(project, Path(scratch), isolated=isolated)
        wheel_key = f"{CODE_PREFIX}{wheel.name}"
        staged = [upload(s3, bucket, wheel, wheel_key)]
    remove_stale_wheels(s3, bucket, keep_key=wheel_key)
    staged.append(upload(s3, bucket, step, STEP_KEY, "text/x-python"))
    staged.append(upload(s3, bucket, project / "bootstrap" / BOOTSTRAP_SCRIPT.name, BOOTSTRAP_KEY, "text/x-shellscript"))
    staged.append(upload(s3, bucket, lock, LOCK_KEY, "text/plain"))
    staged.append(upload(s3, bucket, project / "bootstrap" / NOTEBOOK_SCRIPT.name, NOTEBOOK_KEY, "text/x-shellscript"))
    return staged


def stage_weights(s3, bucket: str, weights: Path) -> list[Staged]:
    """Upload the weights to the key the stack names, with their sha256 as metadata and as a
    `sha256sum`-format `.sha256` file beside them."""
    if not weights.is_file():
        raise StageError(f"weights file {weights} not found")
    staged = upload(s3, bucket, weights, WEIGHTS_KEY, "application/x-hdf5")
    checksum_key = f"{WEIGHTS_KEY}.sha256"
    s3.put_object(
        Bucket=bucket,
        Key=checksum_key,
        Body=f"{staged.sha256}  {Path(WEIGHTS_KEY).name}\n".encode(),
        ContentType="text/plain",
    )
    return [staged, Staged(uri=f"s3://{bucket}/{checksum_key}", sha256=staged.sha256)]


@dataclass(frozen=True)
class StagedInt8Model:
    """An int8 model folder staged under models/: the URI the job reads and the stack's Int8ModelName."""

    uri: str
    name: str
    files: list[Staged]


def check_int8_model(folder: Path) -> str:
    """The name of an int8 model folder fit to stage (int8-<id>, whole, unaltered, named after its
    calibration record's id), or StageError saying what is wrong."""
    from emr_job.engines.int8_model import MODEL_FILES, Int8ModelError, read_int8_model

    if not folder.is_dir():
        raise StageError(f"int8 model folder {folder} not found: make one with `verger quantize`")
    if not INT8_MODEL_NAME.fullmatch(folder.name):
        raise StageError(f"int8 model folder {folder} is not named int8-<12 hex digits> as `verger quantize` "
                         "names it: the name is the model's id, which the stack's Int8ModelName repeats")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise StageError(f"int8 model folder {folder} lacks {', '.join(missing)}: make it again with `verger quantize`")
    try:
        model = read_int8_model(str(folder))
    except Int8ModelError as error:
        raise StageError(str(error)) from error
    if folder.name != f"int8-{model.model_id}":
        raise StageError(f"int8 model folder {folder} holds model {model.model_id}: "
                         f"stage it under its own name, int8-{model.model_id}")
    return folder.name


def stage_int8_model(s3, bucket: str, folder: Path) -> StagedInt8Model:
    """Upload an int8 model folder's files to models/<folder name>/, each with its sha256."""
    from emr_job.engines.int8_model import MODEL_FILES

    name = check_int8_model(folder)
    prefix = f"{MODELS_PREFIX}{name}/"
    staged = [upload(s3, bucket, folder / file, f"{prefix}{file}") for file in MODEL_FILES]
    return StagedInt8Model(uri=f"s3://{bucket}/{prefix.rstrip('/')}", name=name, files=staged)


def stage_tls_certificates(s3, bucket: str, region: str, rotate: bool = False) -> list[Staged]:
    """Upload the cluster's TLS certificates unless they are there: replacing them under running
    nodes would split a cluster in two, so rotation is explicit (`--rotate-tls`)."""
    body = certificates_zip(region)
    condition = {} if rotate else {"IfNoneMatch": "*"}
    try:
        s3.put_object(Bucket=bucket, Key=TLS_CERTIFICATES_KEY, Body=body, ContentType="application/zip", **condition)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "PreconditionFailed":
            raise
        return []
    return [Staged(uri=f"s3://{bucket}/{TLS_CERTIFICATES_KEY}", sha256=hashlib.sha256(body).hexdigest())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstrap.stage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", required=True, help="the stack's bucket (output BucketName)")
    parser.add_argument("--weights", type=Path, help="MobileNetV2 no-top .h5 weights to upload under models/")
    parser.add_argument("--int8-model", type=Path,
                        help="int8-<id> folder `verger quantize` wrote, to upload under models/ (then deploy with "
                             "Precision=int8 and Int8ModelName=int8-<id>)")
    parser.add_argument("--region", help="AWS region (default: the AWS CLI/SDK configuration)")
    parser.add_argument("--project", type=Path, default=REPO_ROOT, help="checkout to stage (default: this one)")
    parser.add_argument(
        "--no-build-isolation", action="store_true",
        help="build the wheel with the current environment's setuptools (offline builds)",
    )
    parser.add_argument("--rotate-tls", action="store_true",
                        help="replace the cluster's TLS certificates (only while no cluster runs)")
    args = parser.parse_args(argv)
    s3 = boto3.client("s3", region_name=args.region)
    int8_model = None
    try:
        if args.int8_model:  # checked before anything is uploaded
            check_int8_model(args.int8_model)
        staged = stage_code(s3, args.bucket, args.project, isolated=not args.no_build_isolation)
        staged += stage_tls_certificates(s3, args.bucket, s3.meta.region_name, rotate=args.rotate_tls)
        if args.weights:
            staged += stage_weights(s3, args.bucket, args.weights)
        if args.int8_model:
            int8_model = stage_int8_model(s3, args.bucket, args.int8_model)
            staged += int8_model.files
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError, S3UploadFailedError) as error:
        print(f"error: cannot stage into s3://{args.bucket}: {error}", file=sys.stderr)
        return 1
    for item in staged:
        print(f"{item.uri}  sha256={item.sha256}")
    if int8_model:
        print(f"int8 model staged at {int8_model.uri}: deploy with Precision=int8 Int8ModelName={int8_model.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

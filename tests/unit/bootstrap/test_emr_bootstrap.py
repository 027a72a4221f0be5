"""Run bootstrap/emr_bootstrap.sh for real, on this machine.

Exercised: argument check, the S3 downloads it asks for (or the local folder the image build
gives it), venv creation with Python 3.11, pip installing the staged lock in hash-checking mode and
then the staged wheel with --no-deps, the import check, and the non-zero exit on each failure. Not exercised: the `aws` CLI itself (a test double maps s3://
to a local folder), `sudo` on /opt, PyPI (pip reads a local wheelhouse through PIP_NO_INDEX and
PIP_FIND_LINKS), and the real lock's TensorFlow install on Amazon Linux.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bootstrap" / "emr_bootstrap.sh"
CODE_URI = "s3://verger-test-bucket/code/"

# `aws s3 cp SRC DST` and `aws s3 cp --recursive --exclude X --include GLOB SRC/ DST/`, with
# s3://BUCKET/KEY read from $FAKE_S3/BUCKET/KEY; it logs every call to $FAKE_S3/calls.
FAKE_AWS = """\
#!{python}
import fnmatch, os, shutil, sys
root = os.environ["FAKE_S3"]
args = [a for a in sys.argv[1:] if a != "--only-show-errors"]
with open(os.path.join(root, "calls"), "a") as log:
    log.write(" ".join(args) + "\\n")
assert args[:2] == ["s3", "cp"], args
args = args[2:]
local = lambda uri: os.path.join(root, uri[len("s3://"):])
if args[0] == "--recursive":
    include = args[args.index("--include") + 1]
    source, target = args[-2:]
    for name in sorted(os.listdir(local(source))):
        if fnmatch.fnmatch(name, include):
            shutil.copy(os.path.join(local(source), name), target)
else:
    source, target = args
    if not os.path.isfile(local(source)):
        sys.exit(f"fatal error: An error occurred (404) when calling the HeadObject operation: {{source}}")
    shutil.copy(local(source), target)
"""


def python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    assert found, "python3.11 is needed: the cluster runs the job with it"
    return found


def build_wheel(project: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(out), str(project)], check=True)
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture
def bucket(tmp_path: Path, project: Path) -> Path:
    """A fake code/ prefix holding a real verger wheel and a one-line hashed lock, plus a wheelhouse."""
    code = tmp_path / "s3" / "verger-test-bucket" / "code"
    code.mkdir(parents=True)
    wheelhouse = tmp_path / "wheelhouse"
    dependency = tmp_path / "verger-testdep"
    (dependency / "verger_testdep").mkdir(parents=True)
    (dependency / "verger_testdep" / "__init__.py").write_text("VERSION = '1.0'\n")
    (dependency / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "verger-testdep"
        version = "1.0"
        """))
    dependency_hash = hashlib.sha256(build_wheel(dependency, wheelhouse).read_bytes()).hexdigest()
    shutil.copy(build_wheel(project, tmp_path / "dist"), code)
    (code / "requirements-job.txt").write_text(f"verger-testdep==1.0 --hash=sha256:{dependency_hash}\n")
    return code


def lock_with(bucket: Path, version: str | None = None, digest: str | None = None) -> None:
    """Rewrite the staged lock's pin: another version and/or another hash (None drops the hash)."""
    name_version, _, hash_option = (bucket / "requirements-job.txt").read_text().strip().partition(" ")
    version = version or name_version.split("==")[1]
    line = f"verger-testdep=={version}" + (f" --hash=sha256:{digest}" if digest else "")
    (bucket / "requirements-job.txt").write_text(line + "\n")


def run_bootstrap(tmp_path: Path, *args: str, with_aws: bool = True) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if with_aws:
        fake_aws = bin_dir / "aws"
        fake_aws.write_text(FAKE_AWS.format(python=sys.executable))
        fake_aws.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{Path(python311()).parent}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_S3": str(tmp_path / "s3"),
        "VERGER_VENV": str(tmp_path / "opt" / "verger" / "venv"),
        "VERGER_PYTHON": python311(),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "wheelhouse"),
        "PIP_CONFIG_FILE": os.devnull,
    }
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)


def venv_python(tmp_path: Path) -> Path:
    return tmp_path / "opt" / "verger" / "venv" / "bin" / "python3.11"


def test_bootstrap_builds_a_python311_venv_with_the_locked_dependencies_and_the_job(tmp_path, bucket):
    # WHEN the bootstrap action runs against the staged code/ prefix
    result = run_bootstrap(tmp_path, CODE_URI)
    # THEN it succeeds, and the venv's Python 3.11 imports the locked dependency and the job's packages
    assert result.returncode == 0, result.stderr
    probe = subprocess.run(
        [str(venv_python(tmp_path)), "-c",
         "import sys, verger_testdep, contract, emr_job; print(sys.version_info[:2], verger_testdep.VERSION)"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert probe.stdout.strip() == "(3, 11) 1.0", probe.stderr
    assert "venv ready" in result.stdout


def test_bootstrap_fetches_the_lock_and_the_wheel_from_the_given_prefix(tmp_path, bucket):
    # WHEN the bootstrap action runs
    run_bootstrap(tmp_path, CODE_URI)
    # THEN it asked S3 for exactly the lock and the verger wheels under that prefix
    calls = (tmp_path / "s3" / "calls").read_text().splitlines()
    assert [c.split()[:3] for c in calls] == [
        ["s3", "cp", f"{CODE_URI}requirements-job.txt"],
        ["s3", "cp", "--recursive"],
    ]
    assert "--include verger-*.whl" in calls[1]


def test_bootstrap_without_a_code_prefix_stops_with_its_usage(tmp_path):
    result = run_bootstrap(tmp_path)
    assert result.returncode != 0
    assert "usage: emr_bootstrap.sh s3://BUCKET/code/" in result.stderr


def test_bootstrap_stops_when_no_wheel_was_staged(tmp_path, bucket):
    # GIVEN a code/ prefix with the lock but no wheel
    for wheel in bucket.glob("*.whl"):
        wheel.unlink()
    # WHEN the bootstrap action runs  THEN it fails, saying what it expected, before creating the venv
    result = run_bootstrap(tmp_path, CODE_URI)
    assert result.returncode != 0
    assert "expected exactly one verger-*.whl" in result.stderr
    assert not venv_python(tmp_path).exists()


def test_bootstrap_stops_when_the_lock_is_missing(tmp_path, bucket):
    (bucket / "requirements-job.txt").unlink()
    result = run_bootstrap(tmp_path, CODE_URI)
    assert result.returncode != 0
    assert "requirements-job.txt" in result.stderr and "failed at line" in result.stderr


def test_bootstrap_stops_when_a_locked_dependency_cannot_be_installed(tmp_path, bucket):
    # GIVEN a lock naming a version the index does not have
    lock_with(bucket, version="9.9", digest="0" * 64)
    # WHEN the bootstrap action runs  THEN pip's failure stops it, and the job wheel is not installed
    result = run_bootstrap(tmp_path, CODE_URI)
    assert result.returncode != 0
    assert "failed at line" in result.stderr
    probe = subprocess.run([str(venv_python(tmp_path)), "-I", "-c", "import emr_job"], capture_output=True)
    assert probe.returncode != 0


def test_bootstrap_installs_only_the_exact_files_the_lock_hashes(tmp_path, bucket):
    # GIVEN a lock whose pin is right but whose hash belongs to another file
    lock_with(bucket, digest="f" * 64)
    # WHEN the bootstrap action runs  THEN pip refuses the wheel it found, and the bootstrap fails
    result = run_bootstrap(tmp_path, CODE_URI)
    assert result.returncode != 0
    assert "HASH" in result.stderr.upper() and "failed at line" in result.stderr


def test_bootstrap_refuses_a_lock_without_hashes(tmp_path, bucket):
    # GIVEN a lock that pins a version but carries no hash
    lock_with(bucket, digest=None)
    # WHEN the bootstrap action runs  THEN hash-checking mode refuses it
    result = run_bootstrap(tmp_path, CODE_URI)
    assert result.returncode != 0
    assert "--hash" in result.stderr


def test_bootstrap_installs_from_a_local_folder_without_the_aws_cli(tmp_path, bucket):
    # GIVEN the staged files in a local folder, as the image build copies them, and no aws CLI
    local = tmp_path / "context"
    shutil.copytree(bucket, local)
    # WHEN the bootstrap runs on that folder
    result = run_bootstrap(tmp_path, f"{local}/", with_aws=False)
    # THEN it builds the same venv, and asked S3 for nothing
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "s3" / "calls").exists()
    probe = subprocess.run([str(venv_python(tmp_path)), "-I", "-c", "import verger_testdep, emr_job"], capture_output=True)
    assert probe.returncode == 0

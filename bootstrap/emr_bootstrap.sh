#!/usr/bin/env bash
# EMR bootstrap action: build the Python 3.11 venv the Verger job runs in, on every node.
#
#   emr_bootstrap.sh s3://BUCKET/code/
#   emr_bootstrap.sh /local/dir/          (bootstrap/Dockerfile: the EMR Serverless image)
#
# Installs the job's dependencies from requirements-job.txt (compiled from pyproject.toml's `job`
# extra by `python -m bootstrap.locks`) in pip's hash-checking mode, so exactly the locked files
# are installed, then the staged verger wheel with --no-deps, into $VERGER_VENV (default
# /opt/verger/venv; template.yaml and functions/serverless_job.py point PYSPARK_PYTHON at it).
# Any failure stops the script with a non-zero status, which makes EMR fail the cluster start
# instead of running steps on nodes without their dependencies.
#
# VERGER_VENV and VERGER_PYTHON exist so the tests can run this script without root; on EMR the
# defaults apply.
set -euo pipefail

readonly CODE_URI="${1:?usage: emr_bootstrap.sh s3://BUCKET/code/ | LOCAL_DIR/}"
readonly VENV="${VERGER_VENV:-/opt/verger/venv}"
readonly PYTHON="${VERGER_PYTHON:-python3.11}"
readonly LOCK_NAME="requirements-job.txt"

fail() {
    echo "verger bootstrap: $*" >&2
    exit 1
}
trap 'echo "verger bootstrap: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: the job needs Python 3.11 (EMR 7.x ships it)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

shopt -s nullglob
if [[ "$CODE_URI" == s3://* ]]; then
    command -v aws >/dev/null || fail "the aws CLI is not on PATH"
    aws s3 cp --only-show-errors "${CODE_URI%/}/$LOCK_NAME" "$work/$LOCK_NAME"
    aws s3 cp --only-show-errors --recursive --exclude "*" --include "verger-*.whl" "${CODE_URI%/}/" "$work/"
else
    [[ -f "${CODE_URI%/}/$LOCK_NAME" ]] || fail "$LOCK_NAME not found in $CODE_URI"
    cp "${CODE_URI%/}/$LOCK_NAME" "${CODE_URI%/}"/verger-*.whl "$work/"
fi
wheels=("$work"/verger-*.whl)
[[ ${#wheels[@]} -eq 1 ]] || fail "expected exactly one verger-*.whl under $CODE_URI, found ${#wheels[@]}"

parent="$(dirname "$VENV")"
if ! mkdir -p "$parent" 2>/dev/null || [[ ! -w "$parent" ]]; then
    sudo mkdir -p "$parent"
    sudo chown "$(id -u):$(id -g)" "$parent"
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check --require-hashes -r "$work/$LOCK_NAME"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check --no-deps "${wheels[0]}"
# Prove the job's own packages import (-I: from the venv, not the current directory).
"$VENV/bin/python" -I -c "import contract, emr_job"
echo "verger bootstrap: $VENV ready ($("$VENV/bin/python" --version))"

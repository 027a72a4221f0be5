#!/usr/bin/env bash
# The notebook server's two pieces on the stack's cluster (template parameter NotebookServer):
#
#   emr_notebook.sh agent                       bootstrap action, every node: the SSM agent runs,
#                                               so `verger notebook` can forward a port to it
#   emr_notebook.sh login PARAMETER REGION      step, primary node: JupyterHub's default user
#                                               (jovyan, whose password EMR documents as
#                                               "jupyter") gets a random password, stored as the
#                                               SecureString PARAMETER for `verger notebook`
#
# The password never appears on a command line or in the step's logs (which go to S3): chpasswd
# and the AWS CLI read it from stdin and from a file only this user can read.
#
# VERGER_NOTEBOOK_WAIT_S exists so the tests need not wait for a container that never comes.
set -euo pipefail

readonly USER_NAME="jovyan"
readonly CONTAINER="jupyterhub"
readonly WAIT_S="${VERGER_NOTEBOOK_WAIT_S:-600}"

fail() {
    echo "verger notebook: $*" >&2
    exit 1
}

ensure_agent() {
    # Amazon Linux images normally ship the agent (unverified for EMR's own): install it only if missing.
    if systemctl is-active --quiet amazon-ssm-agent; then
        echo "verger notebook: the SSM agent runs"
        return
    fi
    rpm -q amazon-ssm-agent >/dev/null 2>&1 || sudo dnf install -y -q amazon-ssm-agent
    sudo systemctl enable --now amazon-ssm-agent
    echo "verger notebook: the SSM agent was started"
}

replace_default_login() {
    local parameter="$1" region="$2" waited=0 password secret
    # EMR starts applications before steps, but the container may still be coming up.
    until sudo docker exec "$CONTAINER" true >/dev/null 2>&1; do
        (( waited < WAIT_S )) || fail "the $CONTAINER container did not start within ${WAIT_S} s"
        sleep 5
        waited=$(( waited + 5 ))
    done
    password="$(head -c 48 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9')"
    password="${password:0:24}"
    [[ ${#password} -eq 24 ]] || fail "could not draw a random password"
    printf '%s:%s\n' "$USER_NAME" "$password" | sudo docker exec -i "$CONTAINER" chpasswd
    secret="$(umask 077 && mktemp)"
    # shellcheck disable=SC2064  # the path is fixed now; the variable is local to this function
    trap "rm -f '$secret'" EXIT
    printf '{"Name": "%s", "Type": "SecureString", "Overwrite": true, "Value": "%s"}\n' \
        "$parameter" "$password" >"$secret"
    aws ssm put-parameter --region "$region" --cli-input-json "file://$secret" >/dev/null
    echo "verger notebook: the login of $USER_NAME is in the SecureString parameter $parameter"
}

case "${1:-}" in
    agent) ensure_agent ;;
    login)
        [[ $# -eq 3 ]] || fail "usage: emr_notebook.sh login PARAMETER REGION"
        replace_default_login "$2" "$3"
        ;;
    *) fail "usage: emr_notebook.sh agent | login PARAMETER REGION" ;;
esac

#!/usr/bin/env bash
# Run the STOMP interop suite against a broker.
#
#   interop/stomp/run.sh HOST:PORT BROKER [pytest args...]
#
# BROKER is rdmq or rabbitmq (it selects where the suite expects the brokers' documented
# differences, see conftest.py). For rabbitmq the login defaults to guest/guest; set
# STOMP_LOGIN / STOMP_PASSCODE to override (or to send credentials to rdmq).
# The virtualenv lives at ${RDMQ_VENV:-<repo>/target/interop-venv} and is reused.
# Exit status: pytest's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/../lib.sh"

if [ $# -lt 2 ]; then
    echo "usage: $0 HOST:PORT rdmq|rabbitmq [pytest args...]" >&2
    exit 2
fi
addr=$1
broker=$2
shift 2
case "$broker" in
rdmq | rabbitmq) ;;
*)
    echo "run.sh: BROKER must be rdmq or rabbitmq, not '$broker'" >&2
    exit 2
    ;;
esac
host=${addr%:*}
port=${addr##*:}
if [ -z "$host" ] || [ -z "$port" ] || [ "$host" = "$addr" ]; then
    echo "run.sh: expected HOST:PORT, got '$addr'" >&2
    exit 2
fi

venv=${RDMQ_VENV:-$repo/target/interop-venv}
ensure_venv "$venv" "$here/requirements.txt"

export STOMP_HOST=$host STOMP_PORT=$port STOMP_BROKER=$broker
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the work tree
if [ "$broker" = rabbitmq ]; then
    export STOMP_LOGIN=${STOMP_LOGIN:-guest} STOMP_PASSCODE=${STOMP_PASSCODE:-guest}
fi

cd "$repo"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider interop/stomp "$@"
exit $?

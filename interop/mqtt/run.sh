#!/usr/bin/env bash
# Run the MQTT interop suite against a broker.
#
#   interop/mqtt/run.sh HOST:PORT BROKER [pytest args...]
#
# BROKER is rdmq or mosquitto (it selects where the suite expects the brokers' documented
# differences, see conftest.py).
# Environment passed through to the suite:
#   MQTT_RESTART_CMD   a shell command that restarts the broker keeping its data on the same
#                      port (the across-restart tests are SKIPPED without it). For mosquitto it
#                      defaults to "interop/mqtt/mosquitto.sh restart" when that script's broker
#                      is the one at HOST:PORT; set it to "" to skip those tests.
#   RUMQTTC_CHECK_BIN  the rumqttc-check binary (test_rumqttc.py is SKIPPED without it);
#                      defaults to <repo>/target/rumqttc-check/release/rumqttc-check if built.
#   MQTT_TIMEOUT, MQTT_QUIET   the suite's wait bounds (default 5 s and 0.5 s).
# The virtualenv lives at ${RDMQ_VENV_MQTT:-<repo>/target/interop-venv-mqtt} and is reused.
# Exit status: pytest's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/../lib.sh"

if [ $# -lt 2 ]; then
    echo "usage: $0 HOST:PORT rdmq|mosquitto [pytest args...]" >&2
    exit 2
fi
addr=$1
broker=$2
shift 2
case "$broker" in
rdmq | mosquitto) ;;
*)
    echo "run.sh: BROKER must be rdmq or mosquitto, not '$broker'" >&2
    exit 2
    ;;
esac
host=${addr%:*}
port=${addr##*:}
if [ -z "$host" ] || [ -z "$port" ] || [ "$host" = "$addr" ]; then
    echo "run.sh: expected HOST:PORT, got '$addr'" >&2
    exit 2
fi

venv=${RDMQ_VENV_MQTT:-$repo/target/interop-venv-mqtt}
ensure_venv "$venv" "$here/requirements.txt"

export MQTT_HOST=$host MQTT_PORT=$port MQTT_BROKER=$broker
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the work tree

# Our private mosquitto (mosquitto.sh) at this address: it can be restarted keeping its store.
if [ "$broker" = mosquitto ] && [ -z "${MQTT_RESTART_CMD+set}" ] &&
    [ "$port" = "${MOSQUITTO_PORT:-1893}" ] && "$here/mosquitto.sh" status >/dev/null 2>&1; then
    export MQTT_RESTART_CMD="$here/mosquitto.sh restart"
fi
export MQTT_RESTART_CMD=${MQTT_RESTART_CMD:-}
if [ -z "${RUMQTTC_CHECK_BIN:-}" ] && [ -x "$repo/target/rumqttc-check/release/rumqttc-check" ]; then
    export RUMQTTC_CHECK_BIN="$repo/target/rumqttc-check/release/rumqttc-check"
fi

cd "$repo"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rsx interop/mqtt "$@"
exit $?

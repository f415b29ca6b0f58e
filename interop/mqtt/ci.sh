#!/usr/bin/env bash
# The MQTT gateway's interop run, as CI does it: the third-party-client suite (paho-mqtt,
# mosquitto_pub/sub, rumqttc) against rdmq's gateway (a release server on free ports, restarted
# by the across-restart tests on the same port with the same data dir), then the same suite
# against Mosquitto (the reference broker, installed from Debian if missing), then bench.py
# against both with the same client in the same run.
#
#   interop/mqtt/ci.sh            # needs target/release/rdmq (cargo build --release)
#   RDMQ_SKIP_REFERENCE=1 interop/mqtt/ci.sh   # rdmq only (says SKIPPED for Mosquitto)
#
# rumqttc-check (interop/mqtt/rumqttc-check, not part of the workspace) is built here into
# ${RUMQTTC_TARGET_DIR:-target/rumqttc-check}.
# Exit status: non-zero if the build or either suite fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RDMQ_BIN:-$repo/target/release/rdmq}
venv=${RDMQ_VENV_MQTT:-$repo/target/interop-venv-mqtt}
mosquitto_port=${MOSQUITTO_PORT:-1893}
[ -x "$bin" ] || { echo "ci.sh: $bin not built (cargo build --release)" >&2; exit 1; }
export RDMQ_BIN=$bin # for rdmq-serve.sh

work=$(mktemp -d /tmp/rdmq-mqtt-ci.XXXXXX)
mosq=
cleanup() {
    "$here/rdmq-serve.sh" stop "$work" || true
    if [ -n "$mosq" ]; then "$here/mosquitto.sh" stop || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "-- building rumqttc-check (the Rust client's checks)"
t0=$SECONDS
rumqttc_target=${RUMQTTC_TARGET_DIR:-$repo/target/rumqttc-check}
CARGO_TARGET_DIR="$rumqttc_target" cargo build --release --locked --quiet \
    --manifest-path "$here/rumqttc-check/Cargo.toml"
export RUMQTTC_CHECK_BIN="$rumqttc_target/release/rumqttc-check"
echo "   built in $((SECONDS - t0))s"

addr=$("$here/rdmq-serve.sh" start "$work")
echo "-- MQTT interop suite against rdmq ($addr)"
# The restart keeps the data dir and passes the port rdmq got explicitly (rdmq-serve.sh).
MQTT_RESTART_CMD="$(printf '%q restart %q' "$here/rdmq-serve.sh" "$work")" \
    "$here/run.sh" "$addr" rdmq

if [ "${RDMQ_SKIP_REFERENCE:-}" = 1 ]; then
    echo "-- SKIPPED: the suite against Mosquitto (RDMQ_SKIP_REFERENCE=1)"
    exit 0
fi
echo "-- MQTT interop suite against Mosquitto (the reference broker)"
mosq=1
"$here/mosquitto.sh" start
MQTT_RESTART_CMD="$(printf '%q restart' "$here/mosquitto.sh")" \
    "$here/run.sh" "127.0.0.1:$mosquitto_port" mosquitto

echo "-- bench.py: the same client against both, in the same run (figures are not checked)"
"$venv/bin/python" "$here/bench.py" "$addr" --count 20000
"$venv/bin/python" "$here/bench.py" "127.0.0.1:$mosquitto_port" --count 20000

#!/usr/bin/env bash
# The STOMP gateway's interop run, as CI does it: the third-party-client suite against rdmq's
# gateway (a release server on free ports), then the same suite against RabbitMQ with its STOMP
# plugin (the reference broker, installed from Debian if missing), then bench.py against both
# with the same client in the same run.
#
#   interop/stomp/ci.sh            # needs target/release/rdmq (cargo build --release)
#   RDMQ_SKIP_REFERENCE=1 interop/stomp/ci.sh   # rdmq only (says SKIPPED for RabbitMQ)
#
# Exit status: non-zero if either suite fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RDMQ_BIN:-$repo/target/release/rdmq}
venv=${RDMQ_VENV:-$repo/target/interop-venv}
[ -x "$bin" ] || { echo "ci.sh: $bin not built (cargo build --release)" >&2; exit 1; }

work=$(mktemp -d /tmp/rdmq-stomp-ci.XXXXXX)
pid=
rabbit=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    [ -n "$rabbit" ] && "$here/rabbitmq.sh" stop || true
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --listen 127.0.0.1:0 --stomp-listen 127.0.0.1:0 --mqtt-listen off --data-dir "$work/data" \
    >"$work/out" 2>"$work/err" &
pid=$!
addr=
for _ in $(seq 300); do
    addr=$(sed -n 's|^listening stomp://||p' "$work/out")
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; echo "ci.sh: rdmq did not start" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$work/err" >&2; echo "ci.sh: no STOMP listener line" >&2; exit 1; }

echo "-- STOMP interop suite against rdmq ($addr)"
"$here/run.sh" "$addr" rdmq

if [ "${RDMQ_SKIP_REFERENCE:-}" = 1 ]; then
    echo "-- SKIPPED: the suite against RabbitMQ (RDMQ_SKIP_REFERENCE=1)"
    exit 0
fi
echo "-- STOMP interop suite against RabbitMQ (the reference broker)"
rabbit=1
"$here/rabbitmq.sh" start
"$here/run.sh" 127.0.0.1:61623 rabbitmq

echo "-- bench.py: the same client against both, in the same run (figures are not checked)"
# rdmq's queues are fsync-durable by default; RabbitMQ's messages only with persistent:true.
"$venv/bin/python" "$here/bench.py" "$addr" --count 20000 --persistent
"$venv/bin/python" "$here/bench.py" 127.0.0.1:61623 --count 20000 --persistent
"$venv/bin/python" "$here/bench.py" 127.0.0.1:61623 --count 20000

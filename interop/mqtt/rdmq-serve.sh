#!/usr/bin/env bash
# Start, restart or stop an rdmq server for the MQTT interop suite, its state kept in DIR.
#
#   interop/mqtt/rdmq-serve.sh start DIR     # prints the MQTT listener's HOST:PORT
#   interop/mqtt/rdmq-serve.sh restart DIR   # graceful stop, then start on the SAME MQTT port
#                                            # with the SAME data dir (MQTT_RESTART_CMD for rdmq)
#   interop/mqtt/rdmq-serve.sh stop DIR
#
# DIR holds: data/ (rdmq --data-dir), pid, mqtt.addr, out (stdout of the latest start: the
# "listening ..." lines), err (stderr of every start, appended). The server listens on loopback
# only: the native protocol on a free port, STOMP off, MQTT on a free port at the first start
# and on that same port at every restart (passed explicitly, so clients reconnect to it).
# The server runs detached (setsid): it is not a child of the caller, which may be pytest
# running MQTT_RESTART_CMD. RDMQ_BIN selects the binary (default <repo>/target/release/rdmq).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${RDMQ_BIN:-$repo/target/release/rdmq}
START_TIMEOUT=${RDMQ_START_TIMEOUT:-30}

log() { echo "rdmq-serve.sh: $*" >&2; }

if [ $# -ne 2 ]; then
    echo "usage: $0 start|restart|stop DIR" >&2
    exit 2
fi
cmd=$1
dir=$2

alive() { # our server's pid is alive (and is an rdmq, not a recycled pid)
    local pid
    [ -f "$dir/pid" ] || return 1
    pid=$(cat "$dir/pid")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-dir $dir/data" || return 1
}

# start_once LISTEN -> 0 and the address on stdout, 1 if rdmq exited (its stderr is in err),
# 2 on a timeout.
start_once() {
    local listen=$1 pid addr
    : >"$dir/out"
    setsid nohup "$bin" serve --listen 127.0.0.1:0 --stomp-listen off --mqtt-listen "$listen" \
        --data-dir "$dir/data" >"$dir/out" 2>>"$dir/err" </dev/null &
    pid=$!
    echo "$pid" >"$dir/pid"
    local deadline=$((SECONDS + START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        # The native listener's line comes first; the MQTT one is the one we want.
        addr=$(sed -n 's|^listening mqtt://||p' "$dir/out")
        if [ -n "$addr" ]; then
            echo "$addr"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 2
}

start() {
    local listen=${1:-127.0.0.1:0} addr rc tries=0
    [ -x "$bin" ] || { log "$bin not built (cargo build --release)"; exit 1; }
    if alive; then
        log "already running (pid $(cat "$dir/pid"))"
        cat "$dir/mqtt.addr"
        return
    fi
    mkdir -p "$dir/data"
    while :; do
        rc=0
        addr=$(start_once "$listen") || rc=$?
        if [ $rc = 0 ]; then
            break
        fi
        tries=$((tries + 1))
        # A port just released may still be refused for a moment: retry a few times.
        if [ $rc = 1 ] && [ "$listen" != 127.0.0.1:0 ] && [ $tries -lt 20 ] &&
            tail -n 5 "$dir/err" | grep -qi "in use"; then
            sleep 0.25
            continue
        fi
        [ $rc = 2 ] && { kill "$(cat "$dir/pid")" 2>/dev/null || true; }
        tail -n 20 "$dir/err" >&2 || true
        if [ $rc = 2 ]; then why="none within ${START_TIMEOUT}s"; else why="rdmq exited"; fi
        log "rdmq did not start (no 'listening mqtt://' line: $why)"
        exit 1
    done
    if [ "$listen" != 127.0.0.1:0 ] && [ "$addr" != "$listen" ]; then
        log "rdmq listens on $addr, not on $listen as asked"
        exit 1
    fi
    echo "$addr" >"$dir/mqtt.addr"
    echo "$addr"
}

stop() {
    if ! alive; then
        rm -f "$dir/pid"
        return
    fi
    local pid i
    pid=$(cat "$dir/pid")
    kill -TERM "$pid" 2>/dev/null || true # rdmq's shards stop on SIGTERM
    for i in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not exit within 20s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$dir/pid"
}

case "$cmd" in
start)
    mkdir -p "$dir"
    start
    ;;
restart)
    [ -f "$dir/mqtt.addr" ] || { log "$dir/mqtt.addr missing: start first"; exit 1; }
    addr=$(cat "$dir/mqtt.addr")
    stop
    start "$addr" >/dev/null
    ;;
stop) stop ;;
*)
    echo "usage: $0 start|restart|stop DIR" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Start, stop or restart a private Mosquitto broker, the reference broker for the MQTT interop
# suite (interop/mqtt/run.sh HOST:PORT mosquitto).
#
#   interop/mqtt/mosquitto.sh start     # installs mosquitto + mosquitto-clients (Debian) if
#                                       # missing; starts a broker with an EMPTY persistence store
#   interop/mqtt/mosquitto.sh restart   # graceful stop (the store is written) + start, KEEPING
#                                       # persistent sessions, queued and retained messages
#   interop/mqtt/mosquitto.sh stop
#   interop/mqtt/mosquitto.sh status
#
# The broker is private to this script: config, pid, log and persistence store live in
# $MOSQUITTO_INTEROP_DIR (default /tmp/rdmq-interop-mosquitto), and it listens on loopback only,
# on 127.0.0.1:${MOSQUITTO_PORT:-1893} (not 1883, which rdmq's MQTT gateway uses by default, and
# which a system mosquitto would take). Anonymous clients are allowed; persistence is on, so the
# suite's across-restart tests (MQTT_RESTART_CMD="interop/mqtt/mosquitto.sh restart") can check
# that sessions and messages survive a restart.
# All commands are idempotent. Works as root on a clean Debian machine without systemd: the
# package's postinst is kept from starting the system service by a policy-rc.d (exit 101).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DIR=${MOSQUITTO_INTEROP_DIR:-/tmp/rdmq-interop-mosquitto}
PORT=${MOSQUITTO_PORT:-1893}
START_TIMEOUT=${MOSQUITTO_START_TIMEOUT:-20}
MOSQUITTO=/usr/sbin/mosquitto
CONF="$DIR/mosquitto.conf"
PIDFILE="$DIR/mosquitto.pid"

log() { echo "mosquitto.sh: $*" >&2; }


install_if_missing() {
    if [ ! -x "$MOSQUITTO" ] || ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
        apt_install_no_service mosquitto mosquitto mosquitto-clients
    fi
}

our_pid() { # prints our broker's pid if it is alive
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # A recycled pid is not ours: check it is a mosquitto with our config.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$CONF" || return 1
    echo "$pid"
}

write_config() {
    # `user`: when started as root, mosquitto drops privileges to this user (default
    # "mosquitto", which could not write the store in $DIR); keep the caller's.
    cat >"$CONF" <<EOF
# Written by interop/mqtt/mosquitto.sh. Loopback only, private to the MQTT interop suite.
listener $PORT 127.0.0.1
allow_anonymous true
user $(id -un)
pid_file $PIDFILE

# Persistent sessions, their queued messages and retained messages survive a restart: the store
# is written at a graceful shutdown (SIGTERM, as 'stop' and 'restart' do) and every 60 s.
persistence true
persistence_location $DIR/data/
autosave_interval 60
# Sessions of clients that never come back are dropped after a day (3.1.1 has no expiry of its
# own; 5.0 clients set theirs with the Session Expiry Interval).
persistent_client_expiration 1d

# Defaults written out, since the suite's expectations depend on them:
# keep-alive up to 18 h 12 min 15 s is accepted as asked (5.0: no Server Keep Alive override);
# a client is dropped after 1.5 x its keep-alive without a packet (spec 3.1.2.10).
max_keepalive 65535
# CONNACK Receive Maximum (5.0) / in-flight window (3.1.1) per client for QoS 1 and 2.
max_inflight_messages 20
# QoS 1/2 messages queued per client beyond its in-flight window (for an offline persistent
# session, or a subscriber that falls behind). Past this Mosquitto DROPS messages it has already
# acknowledged to their publisher; the default 1000 does so in bench.py's 20000-message QoS 1
# burst to a paho subscriber (observed: 5211 of 20000 delivered). A resource limit, not part of
# the protocol: raised so that the comparison with rdmq is of delivered messages.
max_queued_messages 100000
# CONNACK Topic Alias Maximum (5.0).
max_topic_alias 10
# QoS 0 messages for offline persistent sessions are not queued (the default; the spec allows
# either: 3.1.1 3.1.2.4 / 5.0 3.1.2.4 "MAY" store QoS 0 messages).
queue_qos0_messages false
# Overlapping subscriptions (a/+ QoS 0 and a/# QoS 1 on one client): 2.0.11's default (false,
# despite its man page; deprecated, "will default to true") sends 3.1.1 clients ONE copy, with
# the QoS of the first matching filter, which breaks MQTT-3.3.5-1 (deliver respecting the
# maximum QoS of all matching subscriptions). true sends one copy per subscription, each with
# its own QoS (allowed by 3.1.1 3.3.5 / 5.0 3.3.4), as 2.0.11 always does for 5.0 clients.
# Mosquitto logs a deprecation warning for it at start.
allow_duplicate_messages true

log_dest file $DIR/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
EOF
}

# start [keep]: without "keep", the store is emptied first (a fresh broker for a fresh run).
start() {
    local keep=${1:-}
    install_if_missing
    local pid
    if pid=$(our_pid) && port_open "$PORT"; then
        log "already running (pid $pid)"
        echo "mosquitto: MQTT at 127.0.0.1:$PORT"
        return
    fi
    if our_pid >/dev/null; then
        log "a previous broker is running but its port is not open; stopping it first"
        stop
    fi
    if port_open "$PORT"; then
        log "port 127.0.0.1:$PORT is taken by another process; set MOSQUITTO_PORT"
        exit 1
    fi
    # Only a directory this script made is emptied or reused.
    if [ -e "$DIR" ] && [ ! -e "$DIR/.rdmq-interop-mosquitto" ] && [ -n "$(ls -A "$DIR")" ]; then
        log "$DIR exists and was not made by this script; set MOSQUITTO_INTEROP_DIR"
        exit 1
    fi
    if [ -z "$keep" ]; then
        rm -rf "$DIR/data"
    fi
    mkdir -p "$DIR/data"
    touch "$DIR/.rdmq-interop-mosquitto"
    rm -f "$PIDFILE"
    write_config
    # setsid + nohup: the broker outlives this shell and does not get its terminal's signals.
    setsid nohup "$MOSQUITTO" -c "$CONF" >"$DIR/stdout.log" 2>"$DIR/stderr.log" </dev/null &
    local child=$! t0=$SECONDS
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$PORT"; do
        if [ $SECONDS -ge $deadline ]; then
            log "port $PORT not open after ${START_TIMEOUT}s; logs in $DIR:"
            tail -n 30 "$DIR/stderr.log" "$DIR/mosquitto.log" >&2 || true
            exit 1
        fi
        if ! kill -0 "$child" 2>/dev/null; then
            log "mosquitto exited during start-up; logs in $DIR:"
            tail -n 30 "$DIR/stderr.log" "$DIR/mosquitto.log" >&2 || true
            exit 1
        fi
        sleep 0.05
    done
    # The pid file is written before the listener opens; fall back to the child's pid.
    [ -s "$PIDFILE" ] || echo "$child" >"$PIDFILE"
    log "up after $((SECONDS - t0))s (pid $(cat "$PIDFILE"), state in $DIR${keep:+, store kept})"
    echo "mosquitto: MQTT at 127.0.0.1:$PORT"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        log "not running"
        rm -f "$PIDFILE"
        return
    fi
    # SIGTERM: mosquitto closes its clients and writes the persistence store before it exits.
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not exit within 10s of SIGTERM; killing it (the store may be stale)"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$PIDFILE"
    log "stopped"
}

restart() {
    stop
    start keep
}

status() {
    local pid
    if pid=$(our_pid) && port_open "$PORT"; then
        echo "running: MQTT at 127.0.0.1:$PORT (pid $pid)"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
restart) restart ;;
status) status ;;
*)
    echo "usage: $0 start|stop|restart|status" >&2
    exit 2
    ;;
esac

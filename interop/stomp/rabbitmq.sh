#!/usr/bin/env bash
# Start or stop a private RabbitMQ node with the STOMP plugin, used as the reference broker for
# the STOMP interop suite (interop/stomp/run.sh HOST:PORT rabbitmq).
#
#   interop/stomp/rabbitmq.sh start   # installs rabbitmq-server (Debian) if missing, starts a node
#   interop/stomp/rabbitmq.sh stop
#   interop/stomp/rabbitmq.sh status
#
# The node is private to this script: its own node name, config, data, logs and Erlang cookie
# live in $RABBITMQ_INTEROP_DIR (default /tmp/rdmq-interop-rabbitmq), and it listens on loopback
# only, on ports that clash neither with rdmq (STOMP 61613) nor with a system RabbitMQ:
#   STOMP  127.0.0.1:${RABBITMQ_STOMP_PORT:-61623}
#   AMQP   127.0.0.1:${RABBITMQ_AMQP_PORT:-5682}
#   Erlang distribution 127.0.0.1:${RABBITMQ_DIST_PORT:-25682} (epmd on 127.0.0.1:4369)
# Both commands are idempotent. Works as root on a clean Debian machine without systemd: the
# package's postinst is kept from starting the system service by a policy-rc.d (exit 101).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DIR=${RABBITMQ_INTEROP_DIR:-/tmp/rdmq-interop-rabbitmq}
STOMP_PORT=${RABBITMQ_STOMP_PORT:-61623}
AMQP_PORT=${RABBITMQ_AMQP_PORT:-5682}
DIST_PORT=${RABBITMQ_DIST_PORT:-25682}
NODE=${RABBITMQ_INTEROP_NODE:-rdmq-interop@localhost}
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-60}
RMQ_BIN=/usr/lib/rabbitmq/bin

log() { echo "rabbitmq.sh: $*" >&2; }


# The node's environment. We call the scripts in /usr/lib/rabbitmq/bin directly (not the
# /usr/sbin wrappers, which su to the 'rabbitmq' user and use /var/lib/rabbitmq), so the node runs
# as the calling user with everything under $DIR, and rabbitmqctl finds the same cookie ($HOME).
node_env() {
    export HOME="$DIR/home"
    export RABBITMQ_NODENAME="$NODE"
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/log"
    export RABBITMQ_PID_FILE="$DIR/rabbit.pid"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export ERL_EPMD_ADDRESS=127.0.0.1 # read by an epmd that the node starts
    # Erlang distribution listener on loopback too (it binds 0.0.0.0 otherwise).
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

install_if_missing() {
    if [ ! -x "$RMQ_BIN/rabbitmq-server" ]; then
        apt_install_no_service rabbitmq-server rabbitmq-server
    fi
}

running() { # our node's pid is alive
    [ -f "$DIR/rabbit.pid" ] && kill -0 "$(cat "$DIR/rabbit.pid")" 2>/dev/null
}

start() {
    install_if_missing
    if running && port_open "$STOMP_PORT"; then
        log "already running (pid $(cat "$DIR/rabbit.pid"))"
        echo "rabbitmq: STOMP at 127.0.0.1:$STOMP_PORT (login guest/guest, host /)"
        return
    fi
    if running; then
        log "a previous node is running but STOMP is not up; stopping it first"
        stop
    fi
    for p in "$STOMP_PORT" "$AMQP_PORT" "$DIST_PORT"; do
        if port_open "$p"; then
            log "port 127.0.0.1:$p is taken by another process; set RABBITMQ_STOMP_PORT / RABBITMQ_AMQP_PORT / RABBITMQ_DIST_PORT"
            exit 1
        fi
    done
    # A fresh node every start: no queues or durable subscriptions left from earlier runs.
    # (Only a directory this script made is removed.)
    if [ -e "$DIR" ] && [ ! -e "$DIR/.rdmq-interop-rabbitmq" ]; then
        if [ -n "$(ls -A "$DIR")" ]; then
            log "$DIR exists and was not made by this script; set RABBITMQ_INTEROP_DIR"
            exit 1
        fi
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR/home" "$DIR/mnesia" "$DIR/log"
    touch "$DIR/.rdmq-interop-rabbitmq"
    # The node starts epmd (Erlang's port mapper) if none runs; remember to end it in 'stop'.
    if ! port_open 4369; then touch "$DIR/epmd-ours"; fi
    node_env
    : >"$RABBITMQ_CONF_ENV_FILE" # keep /etc/rabbitmq/rabbitmq-env.conf out of it
    cat >"$RABBITMQ_CONFIG_FILE" <<EOF
# Written by interop/stomp/rabbitmq.sh. Loopback only.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
stomp.listeners.tcp.1 = 127.0.0.1:$STOMP_PORT
# guest/guest may log in from loopback (the default); our listeners are loopback-only anyway.
stomp.default_user = guest
stomp.default_pass = guest
# Quiet enough for CI, but errors land in $DIR/log.
log.file.level = warning
log.console = false
EOF
    "$RMQ_BIN/rabbitmq-plugins" enable --offline rabbitmq_stomp >"$DIR/log/plugins.out" 2>&1 || {
        cat "$DIR/log/plugins.out" >&2
        exit 1
    }
    log "starting node $NODE (state in $DIR)"
    # setsid + nohup: the node outlives this shell and does not get its terminal's signals.
    setsid nohup "$RMQ_BIN/rabbitmq-server" >"$DIR/log/startup.out" 2>"$DIR/log/startup.err" </dev/null &
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$STOMP_PORT"; do
        if [ $SECONDS -ge $deadline ]; then
            log "STOMP port $STOMP_PORT not open after ${START_TIMEOUT}s; logs in $DIR/log:"
            tail -n 30 "$DIR/log/startup.out" "$DIR/log/startup.err" >&2 || true
            exit 1
        fi
        if ! jobs -rp | grep -q . && ! running; then
            log "rabbitmq-server exited during start-up; logs in $DIR/log:"
            tail -n 30 "$DIR/log/startup.out" "$DIR/log/startup.err" >&2 || true
            exit 1
        fi
        sleep 0.3
    done
    log "up after ${SECONDS}s (pid $(cat "$DIR/rabbit.pid" 2>/dev/null || echo '?'))"
    echo "rabbitmq: STOMP at 127.0.0.1:$STOMP_PORT (login guest/guest, host /), AMQP at 127.0.0.1:$AMQP_PORT"
}

stop() {
    if [ ! -x "$RMQ_BIN/rabbitmqctl" ] || [ ! -d "$DIR" ]; then
        log "not running"
        return
    fi
    node_env
    local pid=
    [ -f "$DIR/rabbit.pid" ] && pid=$(cat "$DIR/rabbit.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        # 'stop <pid_file>' returns once the node's OS process has exited.
        if ! timeout 60 "$RMQ_BIN/rabbitmqctl" -q stop "$RABBITMQ_PID_FILE" >/dev/null 2>&1; then
            log "rabbitmqctl stop failed; killing pid $pid"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "stopped"
    else
        log "not running"
    fi
    rm -f "$DIR/rabbit.pid"
    # End the epmd our node started, unless some other Erlang node registered with it since.
    if [ -f "$DIR/epmd-ours" ] && command -v epmd >/dev/null 2>&1; then
        if ! epmd -names 2>/dev/null | grep -q '^name '; then
            epmd -kill >/dev/null 2>&1 || true
        fi
        rm -f "$DIR/epmd-ours"
    fi
}

status() {
    if running && port_open "$STOMP_PORT"; then
        echo "running: STOMP at 127.0.0.1:$STOMP_PORT (pid $(cat "$DIR/rabbit.pid"))"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac

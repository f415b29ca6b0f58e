#!/usr/bin/env bash
# Shell helpers shared by the interop scripts (sourced, not run): loopback port probes, a Debian
# package install that keeps the package's own service from starting, and the Python venv.

# port_open PORT -> 0 if something accepts on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# apt_install_no_service SERVICE PACKAGE... : installs the packages with apt-get (as root),
# keeping their postinst from starting SERVICE (there may be no systemd, and it would take the
# service's default ports): a policy-rc.d that exits 101 ("action forbidden"), removed after if
# it is ours. Updates the package lists first if they were never fetched, and once more if the
# install fails on stale lists. Exits with apt's last lines on failure.
apt_install_no_service() {
    local service=$1
    shift
    if [ "$(id -u)" != 0 ]; then
        echo "$* not installed and we are not root: apt-get install $*" >&2
        exit 1
    fi
    echo "installing $* with apt-get" >&2
    local our_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        our_policy=1
    fi
    local ok=0 aptlog
    aptlog=$(mktemp /tmp/interop-apt.XXXXXX)
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then # never updated
        apt-get update -q >>"$aptlog" 2>&1 || true
    fi
    if apt-get install -y -q --no-install-recommends "$@" >>"$aptlog" 2>&1; then
        ok=1
    elif apt-get update -q >>"$aptlog" 2>&1 &&
        apt-get install -y -q --no-install-recommends "$@" >>"$aptlog" 2>&1; then
        ok=1
    fi
    if [ -n "$our_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$ok" != 1 ]; then
        tail -n 20 "$aptlog" >&2
        echo "apt-get install $* failed (log: $aptlog)" >&2
        exit 1
    fi
    rm -f "$aptlog"
    # If a service manager started the system service anyway, stop it: it is not ours.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
        systemctl disable "$service" >/dev/null 2>&1 || true
    fi
}

# ensure_venv VENV REQUIREMENTS: creates the venv if missing and installs REQUIREMENTS into it
# when the file changed since the last install (a sha256 stamp in the venv).
ensure_venv() {
    local venv=$1 reqs=$2 stamp want
    stamp="$venv/.requirements.sha256"
    want=$(sha256sum "$reqs" | cut -d' ' -f1)
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" || {
            echo "python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
            exit 1
        }
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$reqs"
        echo "$want" >"$stamp"
    fi
}

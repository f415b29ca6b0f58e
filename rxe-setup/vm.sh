#!/usr/bin/env bash
# vm.sh CMD [ARGS...]: runs one command as root inside a throw-away qemu VM (Debian's kernel, see
# install.sh) that has a SoftRoCE device rxe0 on eth0 (10.0.2.15/24), and exits with its status.
# The guest sees the host's root read-only over 9p with a tmpfs overlay on top (writes vanish at
# power-off), so host-built binaries under target/ run unchanged; the working directory is the
# same path as here. $RXE_OUT (default: <project>/target/rxe-out) is shared writable at the same
# path: files written there persist. The guest's serial console (the command's stdout and stderr)
# streams to stdout as it comes; vm.sh's own notes go to stderr with a "[rxe-vm]" prefix.
#
# In the guest the command gets HOME and PATH from here, RDMQ_RDMA_DEVICE=rxe0,
# RDMQ_RDMA_ADDR=10.0.2.15, RDMQ_IN_RXE_VM=1, RXE_OUT, and the host variables named in
# RXE_PASS_ENV (space-separated, e.g. "RUST_BACKTRACE RUST_LOG"); stdin is /dev/null; /dev/shm is a
# tmpfs, /dev/hugepages is mounted (RXE_HUGEPAGES=N reserves N 2 MiB pages), /tmp is the host's.
#
# Environment: RXE_TIMEOUT (seconds for the command, default 900; it gets 124 on expiry),
# RXE_BOOT_TIMEOUT (extra seconds for boot and power-off, default 300), RXE_MEM (MiB, default
# 1024), RXE_SMP (vCPUs, default 2), RXE_ACCEL (kvm or tcg: skip the probe), RXE_REPROBE=1 (probe
# KVM again), RXE_KERNEL=bzimage (boot the bzImage instead of the extracted vmlinux), RXE_CACHE
# (default /var/cache/rdmq-rxe), RXE_QUIET=1 (no [rxe-vm] notes).
# Exit status: the command's; 1 with a message when the VM gave no exit marker or setup failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(dirname "$here")
cache=${RXE_CACHE:-/var/cache/rdmq-rxe}
boot=$cache/boot

note() { if [ -z "${RXE_QUIET:-}" ]; then echo "[rxe-vm] $*" >&2; fi; }
die() {
    echo "[rxe-vm] error: $*" >&2
    exit 1
}

if [ $# -eq 0 ]; then
    sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    die "usage: $0 CMD [ARGS...]"
fi

# ---- the boot files (install.sh again when missing or when the guest's /init changed) -------------
if [ ! -s "$boot/stamp" ] || [ "$here/guest-init.sh" -nt "$boot/stamp" ] ||
    [ "$here/install.sh" -nt "$boot/stamp" ]; then
    note "preparing the VM (install.sh)"
    "$here/install.sh" >&2
fi
kpkg=$(cat "$boot/kpkg")
kernel=$boot/vmlinuz
if [ -e "$boot/vmlinux" ] && [ "${RXE_KERNEL:-}" != bzimage ]; then kernel=$boot/vmlinux; fi

mem=${RXE_MEM:-1024}
smp=${RXE_SMP:-2}
timeout_s=${RXE_TIMEOUT:-900}
boot_timeout_s=${RXE_BOOT_TIMEOUT:-300}
out=${RXE_OUT:-$project/target/rxe-out}
mkdir -p "$out"
out=$(cd "$out" && pwd -P)

# qemu_args ACCEL APPEND: the qemu command line (without the -accel part's fallback logic).
qemu_args() {
    local accel=$1 append=$2
    q=(qemu-system-x86_64)
    if [ "$accel" = kvm ]; then
        q+=(-accel kvm -cpu host)
    else
        q+=(-accel "tcg,thread=multi" -cpu max)
    fi
    q+=(-M q35 -smp "$smp" -m "$mem" -nodefaults -no-user-config -display none -serial stdio
        -no-reboot -kernel "$kernel" -initrd "$boot/initrd.gz"
        -append "console=ttyS0 panic=-1 quiet mitigations=off $append"
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=${out//,/,,},mount_tag=out,security_model=none,multidevs=remap"
        -nic "user,model=virtio-net-pci,restrict=on")
}

# ---- KVM or TCG: a short probe boot, remembered per kernel package and host kernel ----------------
accel=${RXE_ACCEL:-}
probe_key="$kpkg $(uname -r)"
if [ -z "$accel" ] && [ -z "${RXE_REPROBE:-}" ] && [ -s "$cache/accel" ]; then
    read -r key1 key2 cached <"$cache/accel" || true
    if [ "$key1 $key2" = "$probe_key" ]; then accel=$cached; fi
fi
if [ -z "$accel" ]; then
    accel=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        note "probing KVM (a boot of at most 20 s)"
        qemu_args kvm rdmqrxe_probe=1
        probe_log=$(mktemp)
        start=$SECONDS
        # A subshell with a second command, so bash's "Aborted" for a crashed qemu goes to the log.
        (
            timeout --foreground -k 5 20 "${q[@]}" </dev/null
            exit $?
        ) >"$probe_log" 2>&1 || true
        if grep -aq RDMQ_RXE_VM_PROBE_OK "$probe_log"; then
            accel=kvm
        else
            why=$(tr -d '\r' <"$probe_log" | grep -a -m 1 '^qemu-system' || true)
            [ -n "$why" ] || why=$(tr -d '\r' <"$probe_log" | grep -av '^$' | tail -n 1 || true)
            note "KVM does not boot this kernel (${why:0:160}); using TCG"
        fi
        note "probe took $((SECONDS - start)) s"
        rm -f "$probe_log"
    fi
    echo "$probe_key $accel" >"$cache/accel" 2>/dev/null || true
fi

# ---- the job: a script and a config the guest reads from the host's /tmp through 9p --------------
jobdir=$(mktemp -d "${TMPDIR:-/tmp}/rdmq-rxe-job.XXXXXX")
jobdir=$(cd "$jobdir" && pwd -P)
case $jobdir in *[[:space:]]*) die "job dir $jobdir has a space (set TMPDIR)" ;; esac
qpid=
reader=
# shellcheck disable=SC2317 # (the traps call these)
cleanup() {
    if [ -n "$qpid" ]; then kill -TERM "$qpid" 2>/dev/null || true; fi
    rm -rf "$jobdir"
}
trap cleanup EXIT
interrupted=
# shellcheck disable=SC2317
on_signal() {
    interrupted=$1
    if [ -n "$qpid" ]; then kill -TERM "$qpid" 2>/dev/null || true; fi
}
trap 'on_signal 129' HUP
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

{
    printf 'OUT=%q\n' "$out"
    printf 'HUGEPAGES=%q\n' "${RXE_HUGEPAGES:-}"
} >"$jobdir/guest.conf"
{
    echo '#!/bin/bash'
    echo '# Written by rxe-setup/vm.sh; run by the guest /init in the chroot.'
    printf 'export HOME=%q PATH=%q\n' "${HOME:-/root}" "$PATH"
    echo 'export RDMQ_RDMA_DEVICE=rxe0 RDMQ_RDMA_ADDR=10.0.2.15 RDMQ_IN_RXE_VM=1'
    printf 'export RXE_OUT=%q\n' "$out"
    for v in ${RXE_PASS_ENV:-}; do
        [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "RXE_PASS_ENV: bad name $v"
        if [ -n "${!v+set}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
    done
    echo 'ulimit -l unlimited 2>/dev/null || true'
    printf 'cd -- %q || exit 1\n' "$PWD"
    printf 'exec timeout -k 10 %q' "$timeout_s"
    printf ' %q' "$@"
    echo
} >"$jobdir/job.sh"

# ---- boot, stream the serial console, read the exit marker ----------------------------------------
qemu_args "$accel" "rdmqrxe_job=$jobdir"
mkfifo "$jobdir/serial"
log=$jobdir/serial.log
sed -u -e 's/\r$//' -e '/^\[ *[0-9.]*\] reboot: Power down$/d' <"$jobdir/serial" | tee "$log" &
reader=$!
note "booting ($accel, $smp vCPUs, $mem MiB, $(basename "$kernel")): $*"
start=$SECONDS
timeout --foreground -k 10 "$((timeout_s + boot_timeout_s))" "${q[@]}" </dev/null >"$jobdir/serial" 2>&1 &
qpid=$!
qrc=0
wait "$qpid" || qrc=$?
if [ -n "$interrupted" ]; then
    wait "$qpid" || true
    wait "$reader" || true
    qpid=
    echo "[rxe-vm] interrupted: the VM was stopped" >&2
    exit "$interrupted"
fi
qpid=
wait "$reader" || true
elapsed=$((SECONDS - start))

if grep -aq RDMQ_RXE_VM_SETUP_FAILED "$log"; then
    die "the VM's setup failed (see the [rxe-guest] line above) after $elapsed s"
fi
marker=$(grep -ao 'RDMQ_RXE_VM_EXIT=[0-9]*' "$log" | tail -n 1 || true)
if [ -z "$marker" ]; then
    if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
        die "no exit marker from the VM: it was killed after $elapsed s (timeout $((timeout_s + boot_timeout_s)) s)"
    fi
    die "no exit marker from the VM (qemu exited with $qrc after $elapsed s)"
fi
rc=${marker#*=}
note "exit status $rc after $elapsed s ($accel)"
exit "$rc"

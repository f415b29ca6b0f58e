#!/usr/bin/env bash
# host.sh up|check|down [NETDEV]: SoftRoCE on the host itself, for kernels that have rdma_rxe (most
# distribution kernels; not this project's build machines, where rxe-setup/vm.sh runs a VM instead).
#   up NETDEV   (root) loads rdma_rxe, creates the rxe device on the Ethernet device NETDEV (which
#               should have an IPv4 address) and waits until its port is ACTIVE; a device that is
#               already there on NETDEV is kept.
#   check       the device's port is ACTIVE and ibv_devices lists it; prints the GID index holding
#               the IPv4-mapped address (the one to use for RoCEv2, e.g. `ib_send_lat -x N`).
#   down        (root) deletes the device (rdma_rxe stays loaded).
# Environment: RXE_DEV (device name, default rxe0). Needs iproute2's rdma and ibverbs-utils
# (rxe-setup/install.sh installs them; so does `apt-get install iproute2 rdma-core ibverbs-utils`).
set -euo pipefail

dev=${RXE_DEV:-rxe0}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    echo "host.sh: $*" >&2
    exit 1
}
usage() { die "usage: $0 up NETDEV | check [NETDEV] | down [NETDEV]"; }
need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "$1 not found: apt-get install $2 (or run $here/install.sh as root)"
}
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root"; }

# has_rxe_module: rdma_rxe is loaded, built in, or loadable.
has_rxe_module() {
    [ -d /sys/module/rdma_rxe ] || modprobe -n -q rdma_rxe 2>/dev/null
}
no_module_msg() {
    cat >&2 <<EOF
host.sh: this kernel ($(uname -r)) has no rdma_rxe module (SoftRoCE, CONFIG_RDMA_RXE), so no
rxe device can be made here. Run the command in a VM that has one instead:
    $here/vm.sh CMD [ARGS...]      (as root; sets up its cache with install.sh on first use)
EOF
    exit 1
}

# link_netdev: the netdev the device is bound to, empty if the device does not exist.
link_netdev() {
    { rdma link show "$dev/1" 2>/dev/null || true; } | sed -n 's/.* netdev \([^ ]*\).*/\1/p'
}
port_active() { rdma link show "$dev/1" 2>/dev/null | grep -q 'state ACTIVE'; }

# ipv4_gid_index: the GID index of the device's port 1 holding an IPv4-mapped address (RoCE v2
# preferred); empty if none.
ipv4_gid_index() {
    local port=/sys/class/infiniband/$dev/ports/1 g i first=
    for g in "$port"/gids/*; do
        [ -e "$g" ] || continue
        i=${g##*/}
        case $(cat "$g" 2>/dev/null) in
            0000:0000:0000:0000:0000:ffff:*)
                if [ "$(cat "$port/gid_attrs/types/$i" 2>/dev/null)" = "RoCE v2" ]; then
                    echo "$i"
                    return
                fi
                first=${first:-$i}
                ;;
        esac
    done
    echo "$first"
}

cmd=${1:-}
netdev=${2:-}
case $cmd in
    up)
        [ -n "$netdev" ] || usage
        need rdma iproute2
        need_root "up"
        [ -d "/sys/class/net/$netdev" ] || die "no network device $netdev (see: ip -br link)"
        has_rxe_module || no_module_msg
        [ -d /sys/module/rdma_rxe ] || modprobe rdma_rxe || no_module_msg
        # rdma_rxe asks for crc32 at run time; load it in case it is a module that is not there yet.
        modprobe -q crc32_generic 2>/dev/null || true
        cur=$(link_netdev)
        if [ -n "$cur" ] && [ "$cur" != "$netdev" ]; then
            die "$dev already exists on $cur (host.sh down first, or RXE_DEV=another name)"
        fi
        if [ -z "$cur" ]; then
            ip -4 -br addr show dev "$netdev" | grep -q '[0-9]\.' ||
                echo "host.sh: warning: $netdev has no IPv4 address, so there is no RoCEv2 IPv4 GID" >&2
            ip link set "$netdev" up
            rdma link add "$dev" type rxe netdev "$netdev" ||
                die "rdma link add $dev type rxe netdev $netdev failed (dmesg | tail may say why)"
        fi
        for _ in $(seq 50); do
            port_active && break
            sleep 0.2
        done
        port_active || die "$dev is not ACTIVE: $(rdma link show "$dev/1" 2>&1)"
        rdma link show "$dev/1"
        echo "host.sh: $dev is up on $netdev; IPv4 GID index: $(ipv4_gid_index)"
        ;;
    check)
        need rdma iproute2
        need ibv_devices ibverbs-utils
        has_rxe_module || [ -n "$(link_netdev)" ] || no_module_msg
        [ -n "$(link_netdev)" ] || die "no $dev (host.sh up NETDEV creates it)"
        if [ -n "$netdev" ] && [ "$(link_netdev)" != "$netdev" ]; then
            die "$dev is on $(link_netdev), not $netdev"
        fi
        port_active || die "$dev is not ACTIVE: $(rdma link show "$dev/1" 2>&1)"
        ibv_devices 2>/dev/null | awk -v d="$dev" '$1 == d { f = 1 } END { exit !f }' ||
            die "ibv_devices does not list $dev (is ibverbs-providers installed?)"
        gid=$(ipv4_gid_index)
        [ -n "$gid" ] || echo "host.sh: warning: $dev has no IPv4-mapped GID (no IPv4 on its netdev?)" >&2
        echo "host.sh: $dev ACTIVE on $(link_netdev), listed by ibv_devices; IPv4 GID index: ${gid:-none}"
        ;;
    down)
        need rdma iproute2
        need_root "down"
        cur=$(link_netdev)
        if [ -z "$cur" ]; then
            echo "host.sh: no $dev; nothing to do"
            exit 0
        fi
        if [ -n "$netdev" ] && [ "$cur" != "$netdev" ]; then die "$dev is on $cur, not $netdev"; fi
        rdma link delete "$dev"
        echo "host.sh: deleted $dev (was on $cur)"
        ;;
    *) usage ;;
esac

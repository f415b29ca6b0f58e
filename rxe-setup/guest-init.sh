#!/bin/busybox sh
# shellcheck shell=sh
# The /init of the rxe VM's initramfs (run by busybox sh in the guest; install.sh copies it in).
# Loads the virtio, 9p, overlay and SoftRoCE modules listed in /modules.order, mounts the host's
# root read-only over 9p with a tmpfs overlay on top at /newroot, mounts the writable "out" share
# at its host path, brings up lo and eth0 (10.0.2.15/24), creates rxe0 on eth0 and waits for it to
# be ACTIVE, then runs the job script that vm.sh wrote (rdmqrxe_job=DIR on the kernel command line;
# DIR/job.sh, DIR/guest.conf) in a chroot, prints "RDMQ_RXE_VM_EXIT=<status>" and powers off.
# With rdmqrxe_probe=1 it only prints "RDMQ_RXE_VM_PROBE_OK" and powers off (the KVM probe).

/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
stty -onlcr 2>/dev/null

say() { echo "[rxe-guest] $*"; }
off() {
    sync
    poweroff -f
    sleep 5
}
fail() {
    say "setup failed: $*"
    echo "RDMQ_RXE_VM_SETUP_FAILED"
    off
}

job=
probe=
read -r cmdline </proc/cmdline
for w in $cmdline; do
    case $w in
        rdmqrxe_job=*) job=${w#*=} ;;
        rdmqrxe_probe=*) probe=${w#*=} ;;
    esac
done
if [ -n "$probe" ]; then
    echo "RDMQ_RXE_VM_PROBE_OK"
    off
fi
[ -n "$job" ] || fail "no rdmqrxe_job= on the kernel command line"

while read -r ko; do
    [ -n "$ko" ] || continue
    insmod "/modules/$ko" || fail "insmod $ko"
done </modules.order

mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower ||
    fail "mount 9p hostroot"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "mount tmpfs"
mkdir -p /upper/up /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/up,workdir=/upper/work /newroot ||
    fail "mount overlay"
[ -r "/newroot$job/guest.conf" ] || fail "no $job/guest.conf seen through 9p"
# guest.conf sets OUT (host dir shared writable, may be empty) and HUGEPAGES (count, may be empty).
OUT=
HUGEPAGES=
# shellcheck disable=SC1090
. "/newroot$job/guest.conf"

for d in proc sys dev; do
    mkdir -p "/newroot/$d"
    mount --move "/$d" "/newroot/$d" || fail "move /$d"
done
mkdir -p /newroot/dev/shm /newroot/dev/pts /newroot/dev/hugepages /newroot/dev/mqueue
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm || fail "mount /dev/shm"
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts 2>/dev/null
mount -t hugetlbfs hugetlbfs /newroot/dev/hugepages 2>/dev/null
mount -t mqueue mqueue /newroot/dev/mqueue 2>/dev/null
if [ -n "$HUGEPAGES" ]; then
    echo "$HUGEPAGES" >/newroot/proc/sys/vm/nr_hugepages
fi
if [ -n "$OUT" ]; then
    mkdir -p "/newroot$OUT"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "/newroot$OUT" ||
        fail "mount writable share at $OUT"
fi

ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 || fail "no eth0"
ip link set eth0 up
chroot /newroot rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0"
n=0
until chroot /newroot rdma link show rxe0/1 2>/dev/null | grep -q ACTIVE; do
    n=$((n + 1))
    [ "$n" -lt 150 ] || fail "rxe0 not ACTIVE after 30 s: $(chroot /newroot rdma link 2>&1)"
    usleep 200000
done

chroot /newroot /usr/bin/env -i /bin/bash "$job/job.sh" </dev/null
rc=$?
echo "RDMQ_RXE_VM_EXIT=$rc"
off

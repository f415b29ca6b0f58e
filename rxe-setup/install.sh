#!/usr/bin/env bash
# Prepares everything vm.sh needs to run commands in a throw-away VM with SoftRoCE (rdma_rxe), for
# hosts whose own kernel lacks it. Idempotent; run as root. It
#   1. apt-get installs qemu, rdma-core, the verbs/rdma_cm tools and libraries, perftest, busybox-static
#      and friends, and what `cargo build --features rdma` needs (clang, libclang-dev, pkg-config) (skipped when dpkg says they are all installed);
#   2. downloads (does not install) the Debian kernel package that linux-image-amd64 depends on,
#      unpacks it with dpkg -x, runs depmod -b, keeps its bzImage, an uncompressed vmlinux pulled out
#      of it with Python's lzma (qemu boots that through PVH, a few seconds faster) and the modules
#      the VM needs, in load order (modprobe -d DIR -S KVER --show-depends);
#   3. builds the initramfs: static busybox, those modules and guest-init.sh as /init.
# Results go to ${RXE_CACHE:-/var/cache/rdmq-rxe}; a second run only checks and takes seconds.
# Environment: RXE_CACHE (cache dir), RXE_KERNEL_PKG (kernel package to use instead of the one
# linux-image-amd64 depends on), RXE_FORCE=1 (rebuild the kernel files and initramfs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${RXE_CACHE:-/var/cache/rdmq-rxe}
# Modules loaded in the guest. crc32_generic must be explicit: rdma_rxe asks for the crc32 algorithm
# at run time, and without it `rdma link add` fails with "failed to init crc32 algorithm err:-2".
modules=(virtio_pci virtio_net 9pnet_virtio 9p overlay crc32_generic rdma_rxe rdma_ucm)
# clang, libclang-dev and pkg-config are for the host's build with `--features rdma` (rdma-sys
# generates its bindings with bindgen), not for the VM.
packages=(qemu-system-x86 rdma-core ibverbs-utils ibverbs-providers libibverbs-dev librdmacm-dev
    rdmacm-utils perftest iproute2 busybox-static cpio kmod python3 xz-utils
    clang libclang-dev pkg-config)

log() { echo "[rxe-install] $*" >&2; }
die() {
    echo "[rxe-install] error: $*" >&2
    exit 1
}

# ---- 1. packages -------------------------------------------------------------------------------
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" != 0 ]; then
    die "missing packages (${missing[*]}): run this script as root"
fi
apt_updated=
apt_update() {
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        apt-get update -q >"$cache/apt.log" 2>&1 || {
            tail -n 20 "$cache/apt.log" >&2
            die "apt-get update failed (log: $cache/apt.log)"
        }
        apt_updated=1
    fi
}
if ! { mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; }; then
    die "cannot write $cache: run as root or set RXE_CACHE"
fi
exec 9>"$cache/.lock"
flock 9 # one install at a time (two vm.sh calls may both find the cache missing)

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # rdma-core ships services (rdma-ndd, iwpmd); keep their postinst from starting them.
    our_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        our_policy=1
    fi
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt_update; fi
    ok=
    if apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$cache/apt.log" 2>&1; then
        ok=1
    else
        apt_update
        if apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$cache/apt.log" 2>&1; then
            ok=1
        fi
    fi
    if [ -n "$our_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -z "$ok" ]; then
        tail -n 20 "$cache/apt.log" >&2
        die "apt-get install failed (log: $cache/apt.log)"
    fi
fi

# ---- 2. kernel -----------------------------------------------------------------------------------
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
kpkg=${RXE_KERNEL_PKG:-}
if [ -z "$kpkg" ]; then
    kpkg=$(kernel_pkg || true)
    if [ -z "$kpkg" ] && [ ! -s "$cache/boot/kpkg" ]; then
        apt_update
        kpkg=$(kernel_pkg || true)
    fi
    if [ -z "$kpkg" ] && [ -s "$cache/boot/kpkg" ]; then
        kpkg=$(cat "$cache/boot/kpkg") # no package lists: keep what we have
    fi
    [ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 depends on"
fi
kver=${kpkg#linux-image-}
kdir=$cache/kernel/$kpkg

if [ -n "${RXE_FORCE:-}" ]; then rm -rf "$kdir" "${cache:?}/boot"; fi
if [ ! -e "$kdir/done" ]; then
    rm -rf "$kdir"
    mkdir -p "$kdir/modules"
    scratch=$(mktemp -d "$cache/scratch.XXXXXX")
    trap 'rm -rf "$scratch"' EXIT
    log "downloading $kpkg (apt-get download, not installed)"
    if ! (cd "$scratch" && apt-get download -q "$kpkg" >"$scratch/download.log" 2>&1); then
        apt_update
        (cd "$scratch" && apt-get download -q "$kpkg" >"$scratch/download.log" 2>&1) || {
            tail -n 20 "$scratch/download.log" >&2
            die "apt-get download $kpkg failed"
        }
    fi
    deb=$(compgen -G "$scratch/*.deb" | head -n 1)
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$scratch/root"
    [ -d "$scratch/root/lib/modules/$kver" ] || die "$kpkg has no lib/modules/$kver"
    depmod -b "$scratch/root" "$kver"
    cp "$scratch/root/boot/vmlinuz-$kver" "$kdir/vmlinuz"

    # Modules in load order, each once; compressed ones are unpacked (busybox insmod wants plain .ko).
    : >"$kdir/modules.order"
    declare -A seen=()
    for m in "${modules[@]}"; do
        deps=$(modprobe -d "$scratch/root" -S "$kver" --show-depends "$m") ||
            die "modprobe --show-depends $m failed"
        while read -r kind path _; do
            [ "$kind" = insmod ] || continue
            [ -z "${seen[$path]:-}" ] || continue
            seen[$path]=1
            name=$(basename "$path")
            case $name in
                *.ko.xz) xz -dc "$path" >"$kdir/modules/${name%.xz}" && name=${name%.xz} ;;
                *.ko.zst) zstd -qdc "$path" >"$kdir/modules/${name%.zst}" && name=${name%.zst} ;;
                *.ko.gz) gzip -dc "$path" >"$kdir/modules/${name%.gz}" && name=${name%.gz} ;;
                *) cp "$path" "$kdir/modules/$name" ;;
            esac
            echo "$name" >>"$kdir/modules.order"
        done <<<"$deps"
    done
    grep -qx 'crc32_generic.ko' "$kdir/modules.order" ||
        log "note: crc32_generic is not a module of $kver (built in?)"

    # Optional: the uncompressed kernel inside the bzImage (XZ stream), if it is an ELF with the
    # PVH entry note qemu needs to boot it directly.
    py=/usr/bin/python3
    [ -x "$py" ] || py=python3
    if "$py" - "$kdir/vmlinuz" "$kdir/vmlinux" <<'EOF'; then
import lzma, struct, sys
src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
off = data.find(b"\xfd7zXZ\x00")
if off < 0:
    sys.exit("no XZ stream in the bzImage")
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
if elf[:4] != b"\x7fELF" or elf[4] != 2:
    sys.exit("not a 64-bit ELF")
phoff, = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
pvh = False
for i in range(phnum):
    p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
    if p_type != 4:  # PT_NOTE
        continue
    pos, end = p_offset, p_offset + p_filesz
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
        name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        if name == b"Xen" and ntype == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
            pvh = True
        pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
if not pvh:
    sys.exit("no PVH entry note")
open(dst, "wb").write(elf)
EOF
        log "extracted vmlinux ($(($(stat -c %s "$kdir/vmlinux") / 1048576)) MiB, PVH boot)"
    else
        rm -f "$kdir/vmlinux"
        log "no usable vmlinux; the VM boots the bzImage"
    fi
    echo "$kver" >"$kdir/kver"
    touch "$kdir/done"
    rm -rf "$scratch"
    trap - EXIT
fi

# ---- 3. initramfs ----------------------------------------------------------------------------------
busybox=$(dpkg -L busybox-static | grep -m1 '/bin/busybox$') || die "busybox-static has no busybox"
stamp=$( (
    echo "$kpkg"
    sha256sum "$here/install.sh" "$here/guest-init.sh" "$kdir/modules.order" "$busybox" | cut -d' ' -f1
) | sha256sum | cut -d' ' -f1)
if [ ! -s "$cache/boot/stamp" ] || [ "$(cat "$cache/boot/stamp")" != "$stamp" ]; then
    log "building the initramfs"
    stage=$(mktemp -d "$cache/initramfs.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,dev,proc,sys,modules}
    cp "$busybox" "$stage/bin/busybox"
    cp "$here/guest-init.sh" "$stage/init"
    chmod 755 "$stage/init" "$stage/bin/busybox"
    cp "$kdir"/modules/*.ko "$stage/modules/"
    cp "$kdir/modules.order" "$stage/modules.order"
    mknod "$stage/dev/console" c 5 1 2>/dev/null || true # /init reopens it after devtmpfs anyway
    mknod "$stage/dev/null" c 1 3 2>/dev/null || true
    rm -rf "$cache/boot.new"
    mkdir -p "$cache/boot.new"
    (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$cache/boot.new/initrd.gz"
    cp "$kdir/vmlinuz" "$cache/boot.new/vmlinuz"
    if [ -e "$kdir/vmlinux" ]; then ln "$kdir/vmlinux" "$cache/boot.new/vmlinux" 2>/dev/null ||
        cp "$kdir/vmlinux" "$cache/boot.new/vmlinux"; fi
    echo "$kpkg" >"$cache/boot.new/kpkg"
    echo "$kver" >"$cache/boot.new/kver"
    echo "$stamp" >"$cache/boot.new/stamp"
    rm -rf "${cache:?}/boot"
    mv "$cache/boot.new" "$cache/boot"
    rm -rf "$stage"
    trap - EXIT
    # Drop kernels other than the current one.
    for d in "$cache"/kernel/*; do
        [ "$d" = "$kdir" ] || rm -rf "$d"
    done
    log "initramfs $(($(stat -c %s "$cache/boot/initrd.gz") / 1024)) KiB, kernel $kver"
fi
# vm.sh reruns this script when guest-init.sh or this file is newer than the stamp (a fresh checkout).
touch "$cache/boot/stamp" 2>/dev/null || true
log "ready: $cache/boot (kernel $kver)"

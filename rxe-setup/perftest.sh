#!/usr/bin/env bash
# perftest.sh: the RDMA baseline, run where an rxe (or any RoCE) device exists, normally inside the
# VM: `rxe-setup/vm.sh rxe-setup/perftest.sh`. Runs ib_send_lat and ib_write_bw with server and
# client on the same device and address (both ends on $RDMQ_RDMA_ADDR), small counts so it ends
# in well under a minute under emulation, then an rdma_cm check with rping. Prints perftest's
# summary lines and one machine-readable line per test:
#   PERFTEST ib_send_lat bytes=2 iters=N t_min_us=.. t_typical_us=.. t_avg_us=.. t_p99_us=.. ... clock=..
#   PERFTEST ib_write_bw bytes=65536 iters=N bw_peak_MBps=.. bw_avg_MBps=.. msg_rate_Mpps=..
#   PERFTEST rping count=3 ok=1
# Environment: RDMQ_RDMA_DEVICE (default rxe0), RDMQ_RDMA_ADDR (default 10.0.2.15),
# PERFTEST_GID (GID index; default: the one holding the IPv4-mapped address, else 1),
# PERFTEST_LAT_ITERS (default 1000), PERFTEST_BW_ITERS (default 500), PERFTEST_BW_SIZE (65536),
# PERFTEST_LAT_SIZE (bytes per ib_send_lat message, default 2), PERFTEST_LAT_CYCLES=1 (latency in cycles from the start, see below).
# Exit status: 0 when every test produced its figures, 1 otherwise.
set -euo pipefail

dev=${RDMQ_RDMA_DEVICE:-rxe0}
addr=${RDMQ_RDMA_ADDR:-10.0.2.15}
lat_iters=${PERFTEST_LAT_ITERS:-1000}
bw_iters=${PERFTEST_BW_ITERS:-500}
bw_size=${PERFTEST_BW_SIZE:-65536}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

[ -d "/sys/class/infiniband/$dev" ] ||
    { echo "perftest.sh: no RDMA device $dev here (run it through rxe-setup/vm.sh)" >&2; exit 1; }

# The GID index whose GID is the IPv4-mapped form of $addr (::ffff:a.b.c.d), RoCE v2 preferred.
gid_index() {
    local want d port=/sys/class/infiniband/$dev/ports/1 i best=
    IFS=. read -r a b c d <<<"$addr"
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d")
    for g in "$port"/gids/*; do
        i=${g##*/}
        [ "$(cat "$g" 2>/dev/null)" = "$want" ] || continue
        if [ "$(cat "$port/gid_attrs/types/$i" 2>/dev/null)" = "RoCE v2" ]; then
            echo "$i"
            return
        fi
        best=${best:-$i}
    done
    echo "${best:-1}"
}
gid=${PERFTEST_GID:-$(gid_index)}
echo "perftest.sh: device $dev, address $addr, GID index $gid"

# run_pair NAME PORT ARGS...: the server in the background, then the client (retried: a slow
# server may not be listening yet, or may reject the first connect); every process has a timeout.
# Leaves the client's output in $work/NAME.client.
run_pair() {
    local name=$1 port=$2 try srv
    shift 2
    for try in 1 2 3 4 5; do
        timeout -k 5 60 "$name" -d "$dev" -x "$gid" -p "$port" "$@" >"$work/$name.server" 2>&1 &
        srv=$!
        sleep 1
        if timeout -k 5 60 "$name" -d "$dev" -x "$gid" -p "$port" "$@" "$addr" \
            >"$work/$name.client" 2>&1; then
            wait "$srv" || true
            return 0
        fi
        echo "perftest.sh: $name client attempt $try failed: $(grep -v '^ *$' "$work/$name.client" |
            tail -n 1)" >&2
        kill "$srv" 2>/dev/null || true
        wait "$srv" 2>/dev/null || true
        port=$((port + 1))
    done
    cat "$work/$name.server" "$work/$name.client" >&2
    return 1
}

# data_line FILE: the first line after perftest's "#bytes" header whose first field is a number.
data_line() {
    awk '/#bytes/ { hdr = 1; next } hdr && $1 ~ /^[0-9]+$/ { print; exit }' "$1"
}

# finite V...: every V is a plain number. perftest prints inf/nan when its TSC calibration fails
# ("Correlation coefficient r^2: ... < 0.9"), which happens now and then under emulation.
finite() {
    local v
    for v; do [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || return 1; done
}
# summary FILE: perftest's header and figures lines.
summary() { grep -E '#bytes|^ *[0-9]+ +[0-9]+ ' "$1" || true; }

status=0
start=$SECONDS

# ib_send_lat: as perftest reports it (microseconds); if its calibration fails, once more in
# cycles (-C, no calibration), converted with the kernel's TSC frequency from /proc/cpuinfo.
echo "== ib_send_lat -n $lat_iters"
modes=(us cycles)
if [ -n "${PERFTEST_LAT_CYCLES:-}" ]; then modes=(cycles); fi
port=18515
done_lat=
for mode in "${modes[@]}"; do
    extra=()
    if [ "$mode" = cycles ]; then extra=(-C); fi
    run_pair ib_send_lat "$port" -s "${PERFTEST_LAT_SIZE:-2}" -n "$lat_iters" "${extra[@]}" || break
    port=$((port + 10))
    read -r bytes iters tmin tmax ttyp tavg tstd p99 p999 _ <<<"$(data_line "$work/ib_send_lat.client")" || true
    if ! finite "${tmin:-}" "${tmax:-}" "${ttyp:-}" "${tavg:-}" "${tstd:-}" "${p99:-}" "${p999:-}"; then
        echo "perftest.sh: ib_send_lat gave no finite figures ($(grep -m 1 -i correlation \
            "$work/ib_send_lat.client" || echo "no calibration message")); again" >&2
        continue
    fi
    summary "$work/ib_send_lat.client"
    clock=perftest
    if [ "$mode" = cycles ]; then
        mhz=$(awk -F: '/^cpu MHz/ { print $2 + 0; exit }' /proc/cpuinfo)
        finite "$mhz" || { echo "perftest.sh: no cpu MHz in /proc/cpuinfo" >&2; break; }
        read -r tmin tmax ttyp tavg tstd p99 p999 <<<"$(echo "$tmin $tmax $ttyp $tavg $tstd $p99 $p999" |
            awk -v m="$mhz" '{ for (i = 1; i <= NF; i++) printf "%.2f ", $i / m; print "" }')"
        clock="cycles/${mhz}MHz"
    fi
    echo "PERFTEST ib_send_lat bytes=$bytes iters=$iters t_min_us=$tmin t_max_us=$tmax" \
        "t_typical_us=$ttyp t_avg_us=$tavg t_stdev_us=$tstd t_p99_us=$p99 t_p999_us=$p999" \
        "gid=$gid clock=$clock"
    done_lat=1
    break
done
if [ -z "$done_lat" ]; then
    echo "PERFTEST ib_send_lat failed"
    status=1
fi

echo "== ib_write_bw -s $bw_size -n $bw_iters"
port=18545
done_bw=
for _ in 1 2 3; do
    run_pair ib_write_bw "$port" -s "$bw_size" -n "$bw_iters" || break
    port=$((port + 10))
    read -r bytes iters peak avg rate _ <<<"$(data_line "$work/ib_write_bw.client")" || true
    if ! finite "${peak:-}" "${avg:-}" "${rate:-}"; then
        echo "perftest.sh: ib_write_bw gave no finite figures ($(grep -m 1 -i correlation \
            "$work/ib_write_bw.client" || echo "no calibration message")); again" >&2
        continue
    fi
    summary "$work/ib_write_bw.client"
    echo "PERFTEST ib_write_bw bytes=$bytes iters=$iters bw_peak_MBps=$peak bw_avg_MBps=$avg" \
        "msg_rate_Mpps=$rate gid=$gid"
    done_bw=1
    break
done
if [ -z "$done_bw" ]; then
    echo "PERFTEST ib_write_bw failed"
    status=1
fi

echo "== rping -C 3 (rdma_cm)"
ok=0
for try in 1 2 3; do
    timeout -k 5 30 rping -s -a "$addr" -C 3 -v >"$work/rping.server" 2>&1 &
    srv=$!
    sleep 1
    if timeout -k 5 30 rping -c -a "$addr" -C 3 -v >"$work/rping.client" 2>&1 &&
        [ "$(grep -c 'ping data' "$work/rping.client")" = 3 ]; then
        wait "$srv" || true
        ok=1
        break
    fi
    echo "perftest.sh: rping attempt $try failed: $(tail -n 1 "$work/rping.client")" >&2
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
done
tail -n 1 "$work/rping.client"
echo "PERFTEST rping count=3 ok=$ok"
[ "$ok" = 1 ] || status=1

echo "perftest.sh: done in $((SECONDS - start)) s, status $status"
exit "$status"

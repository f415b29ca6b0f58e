#!/usr/bin/env python3
"""Same-client MQTT benchmark: run it against rdmq and Mosquitto in one session to compare.

    bench.py HOST:PORT [--count N] [--size B] [--latency-count N] [--qos 0,1]
             [--inflight W] [--protocol 311|5]

For each QoS (default 0 and 1), with a fresh topic bench/<uuid>/q<QoS>:
Phase 1 (throughput): one paho-mqtt subscriber connection (subscribed at that QoS before the
first PUBLISH) and one publisher connection; the publisher PUBLISHes N messages of B bytes as
fast as paho takes them. For QoS 1 it keeps up to W PUBLISHes in flight (paho's
max_inflight_messages; the rest wait in paho's queue).
  send_msgs_per_s = N / (first PUBLISH .. the last one written (QoS 0) / acknowledged (QoS 1))
  e2e_msgs_per_s  = N / (first PUBLISH .. the last message received by the subscriber)
`received` counts what the subscriber got; the phase ends when all arrived or none came for
2 s. QoS 0 may lose messages (a broker may drop QoS 0 for a slow subscriber); a QoS 1 or 2
message that the broker acknowledged must not be lost: bench.py exits 1 if one was.
Phase 2 (latency): one message in flight: PUBLISH one message whose payload starts with a
send timestamp, wait until the subscriber has it, repeat. p50/p99 of receive - send time in
microseconds.

Prints one line of JSON per QoS. The client (paho-mqtt, pure Python) is the limit long before
either broker is on a 2-core machine; the point is the comparison with the same client.
Needs: pip install paho-mqtt==2.2.0 (interop/mqtt/requirements.txt).
"""

import argparse
import json
import sys
import threading
import time
import uuid

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Side:
    """One connection's callbacks and a condition to wait on."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected = None  # reason code value once CONNACK came
        self.subscribed = False
        self.count = 0
        self.last = None  # perf_counter_ns of the last message received
        self.latency_mode = False
        self.latencies_ns = []
        self.acked = 0  # on_publish calls (QoS 0: written; QoS 1: PUBACK)
        self.last_acked = None
        self.disconnected = None

    def on_connect(self, client, userdata, flags, rc, props):
        with self.cond:
            self.connected = rc.value
            self.cond.notify_all()

    def on_subscribe(self, client, userdata, mid, rcs, props):
        with self.cond:
            self.subscribed = [r.value for r in rcs]
            self.cond.notify_all()

    def on_message(self, client, userdata, msg):
        now = time.perf_counter_ns()
        with self.cond:
            self.count += 1
            self.last = now
            if self.latency_mode:
                self.latencies_ns.append(now - int(msg.payload[:20]))
            self.cond.notify_all()

    def on_publish(self, client, userdata, mid, rc, props):
        now = time.perf_counter_ns()
        with self.cond:
            self.acked += 1
            self.last_acked = now
            self.cond.notify_all()

    def on_disconnect(self, client, userdata, flags, rc, props):
        with self.cond:
            self.disconnected = rc.value
            self.cond.notify_all()

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if self.disconnected is not None:
                    raise SystemExit(f"bench: connection lost ({self.disconnected}) waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"bench: timed out after {timeout:.0f}s waiting for {what}")
                self.cond.wait(left)


def connect(host, port, protocol, side, inflight=None):
    kw = {"clean_session": True} if protocol == mqtt.MQTTv311 else {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:12]}",
                    protocol=protocol, **kw)
    c.on_connect, c.on_subscribe, c.on_message = side.on_connect, side.on_subscribe, side.on_message
    c.on_publish, c.on_disconnect = side.on_publish, side.on_disconnect
    if inflight:
        c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)  # unbounded: the publisher's backlog waits in paho
    try:
        c.connect(host, port, keepalive=60)
    except OSError as e:
        raise SystemExit(f"bench: cannot connect to {host}:{port}: {e}") from None
    c.loop_start()
    side.wait(lambda: side.connected is not None, 10, "CONNACK")
    if side.connected != 0:
        raise SystemExit(f"bench: CONNACK refused: {side.connected}")
    return c


def percentile(sorted_values, p):
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def run_qos(args, host, port, protocol, qos):
    topic = f"bench/{uuid.uuid4().hex}/q{qos}"
    sub_side, pub_side = Side(), Side()
    sub = connect(host, port, protocol, sub_side)
    sub.subscribe(topic, qos)
    sub_side.wait(lambda: sub_side.subscribed, 10, "SUBACK")
    if sub_side.subscribed != [qos]:
        raise SystemExit(f"bench: SUBACK {sub_side.subscribed}, wanted QoS {qos}")
    pub = connect(host, port, protocol, pub_side, inflight=args.inflight if qos else None)

    # Phase 1: throughput.
    n = args.count
    payload = b"x" * args.size
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pub.publish(topic, payload, qos=qos)
    pub_side.wait(lambda: pub_side.acked >= n, args.timeout, f"{n} publishes done (have {pub_side.acked})")
    t_sent = pub_side.last_acked
    deadline = time.monotonic() + args.timeout
    while True:  # all received, or no progress for 2 s (QoS 0 may lose messages)
        with sub_side.cond:
            before = sub_side.count
            if before >= n:
                break
            sub_side.cond.wait(2.0)
            stalled = sub_side.count == before
        if stalled or time.monotonic() > deadline:
            break
    received = sub_side.count
    t_recv = sub_side.last

    # Phase 2: latency, one message in flight.
    with sub_side.cond:
        sub_side.latency_mode = True
        base = sub_side.count
    pad = b"x" * (args.size - 20)
    t_lat0 = time.monotonic()
    for i in range(1, args.latency_count + 1):
        stamp = str(time.perf_counter_ns()).rjust(20, "0").encode()
        pub.publish(topic, stamp + pad, qos=qos)
        want = base + i
        sub_side.wait(lambda: sub_side.count >= want, 10, f"latency message {i}")
        if time.monotonic() - t_lat0 > args.timeout:
            break
    lat = sorted(sub_side.latencies_ns)

    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()

    return {
        "broker": f"{host}:{port}",
        "client": f"paho-mqtt {paho.mqtt.__version__}",
        "protocol": "5.0" if protocol == mqtt.MQTTv5 else "3.1.1",
        "qos": qos,
        "count": n,
        "size": args.size,
        "inflight": args.inflight if qos else None,
        "received": received,
        "send_msgs_per_s": round(n / ((t_sent - t0) / 1e9), 1),
        "e2e_msgs_per_s": round(received / ((t_recv - t0) / 1e9), 1) if t_recv else None,
        "latency_count": len(lat),
        "latency_p50_us": round(percentile(lat, 50) / 1e3, 1) if lat else None,
        "latency_p99_us": round(percentile(lat, 99) / 1e3, 1) if lat else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("address", help="HOST:PORT of the MQTT listener")
    ap.add_argument("--count", type=int, default=20000, help="messages in the throughput phase")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (at least 20 for latency)")
    ap.add_argument("--latency-count", type=int, default=2000, help="round trips in the latency phase")
    ap.add_argument("--qos", default="0,1", help="comma-separated QoS levels to run (0, 1, 2)")
    ap.add_argument("--inflight", type=int, default=100, help="publisher's in-flight window for QoS > 0")
    ap.add_argument("--protocol", choices=["311", "5"], default="311")
    ap.add_argument("--timeout", type=float, default=120, help="bound on each phase, seconds")
    args = ap.parse_args()
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        ap.error("address must be HOST:PORT")
    if args.count < 1 or args.size < 20 or args.inflight < 1:
        ap.error("--count >= 1, --size >= 20, --inflight >= 1")
    try:
        levels = [int(q) for q in args.qos.split(",")]
    except ValueError:
        ap.error("--qos: comma-separated 0, 1, 2")
    if any(q not in (0, 1, 2) for q in levels):
        ap.error("--qos: comma-separated 0, 1, 2")
    protocol = mqtt.MQTTv5 if args.protocol == "5" else mqtt.MQTTv311
    rc = 0
    for qos in levels:
        out = run_qos(args, host, int(port), protocol, qos)
        print(json.dumps(out), flush=True)
        if qos and out["received"] < out["count"]:
            print(f"bench: QoS {qos}: {out['count'] - out['received']} acknowledged messages were "
                  "not delivered to the subscriber", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())

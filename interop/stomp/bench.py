#!/usr/bin/env python3
"""Same-client STOMP benchmark: run it against rdmq and RabbitMQ in one session to compare.

    bench.py HOST:PORT [--count N] [--size B] [--latency-count N] [--ack auto|client-individual]

Phase 1 (throughput): one stomp.py producer connection SENDs N messages of B bytes to a fresh
/queue/bench-<uuid> (a RECEIPT is asked on the last one), while one consumer connection,
subscribed before the first SEND, receives them all.
  send_msgs_per_s = N / (first SEND .. RECEIPT of the last SEND)
  e2e_msgs_per_s  = N / (first SEND .. last MESSAGE received)
Phase 2 (latency): request-reply style, one message in flight: SEND one message whose body
starts with a send timestamp, wait until the consumer has it, repeat. p50/p99 of
receive time - send time, in microseconds.

Prints one line of JSON. The client (stomp.py, pure Python) is the limit long before either
broker is on a 2-core machine; the point is the comparison with the same client.
Needs: pip install stomp.py==9.0.0 (interop/stomp/requirements.txt).
Login: --login/--passcode, default $STOMP_LOGIN/$STOMP_PASSCODE (RabbitMQ: guest/guest).
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid

import stomp


class Consumer(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.count = 0
        self.last = None  # perf_counter of the last MESSAGE
        self.latencies_ns = []
        self.latency_mode = False
        self.errors = []
        self.receipts = set()
        self.conn = None
        self.ack_mode = "auto"
        self.connected = False

    def on_message(self, frame):
        now = time.perf_counter_ns()
        if self.ack_mode != "auto":
            self.conn.ack(frame.headers["ack"])
        with self.cond:
            self.count += 1
            self.last = now
            if self.latency_mode:
                sent = int(frame.body[:20])
                self.latencies_ns.append(now - sent)
            self.cond.notify_all()

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append((frame.headers, frame.body))
            self.cond.notify_all()

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if self.errors:
                    raise SystemExit(f"bench: ERROR frame: {self.errors[0]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"bench: timed out after {timeout:.0f}s waiting for {what}")
                self.cond.wait(left)


def connect(host, port, login, passcode, listener):
    conn = stomp.Connection12([(host, port)], auto_decode=False, vhost="/", heartbeats=(0, 0),
                              reconnect_attempts_max=1)
    conn.set_listener("bench", listener)
    try:
        conn.connect(login, passcode, wait=False, with_connect_command=True)
    except stomp.exception.ConnectFailedException:
        raise SystemExit(f"bench: cannot connect to {host}:{port}") from None
    listener.wait(lambda: listener.connected, 10, "CONNECTED")
    return conn


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("address", help="HOST:PORT of the STOMP listener")
    ap.add_argument("--count", type=int, default=20000, help="messages in the throughput phase")
    ap.add_argument("--size", type=int, default=64, help="body bytes (at least 20 for latency)")
    ap.add_argument("--latency-count", type=int, default=2000, help="round trips in the latency phase")
    ap.add_argument(
        "--persistent",
        action="store_true",
        help="send with persistent:true (RabbitMQ then writes messages to disk; rdmq queues are "
        "fsync-durable by default and ignore the header)",
    )
    ap.add_argument("--ack", choices=["auto", "client-individual"], default="auto")
    ap.add_argument("--prefetch", type=int, default=1000, help="prefetch-count for client-individual")
    ap.add_argument("--login", default=os.environ.get("STOMP_LOGIN") or None)
    ap.add_argument("--passcode", default=os.environ.get("STOMP_PASSCODE") or None)
    ap.add_argument("--timeout", type=float, default=120, help="bound on each phase, seconds")
    args = ap.parse_args()
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        ap.error("address must be HOST:PORT")
    port = int(port)
    if args.count < 1 or args.size < 20:
        ap.error("--count >= 1 and --size >= 20")

    dest = f"/queue/bench-{uuid.uuid4().hex}"
    body = b"x" * args.size

    cons_l = Consumer()
    cons_l.ack_mode = args.ack
    cons = connect(host, port, args.login, args.passcode, cons_l)
    cons_l.conn = cons
    sub_headers = {"receipt": "sub"}
    if args.ack != "auto":
        sub_headers["prefetch-count"] = str(args.prefetch)
    cons.subscribe(dest, id="bench", ack=args.ack, headers=sub_headers)
    cons_l.wait(lambda: "sub" in cons_l.receipts, 10, "SUBSCRIBE receipt")

    prod_l = Consumer()
    prod = connect(host, port, args.login, args.passcode, prod_l)

    # Phase 1: throughput.
    n = args.count
    t0 = time.perf_counter_ns()
    extra = {"persistent": "true"} if args.persistent else {}
    for _ in range(n - 1):
        prod.send(dest, body, headers=extra)
    prod.send(dest, body, headers={"receipt": "last", **extra})
    prod_l.wait(lambda: "last" in prod_l.receipts, args.timeout, "the last SEND's receipt")
    t_sent = time.perf_counter_ns()
    cons_l.wait(lambda: cons_l.count >= n, args.timeout, f"{n} messages (have {cons_l.count})")
    t_recv = cons_l.last

    # Phase 2: latency, one message in flight.
    with cons_l.cond:
        cons_l.latency_mode = True
        base = cons_l.count
    pad = b"x" * (args.size - 20)
    t_lat0 = time.monotonic()
    for i in range(1, args.latency_count + 1):
        stamp = str(time.perf_counter_ns()).rjust(20, "0").encode()
        prod.send(dest, stamp + pad, headers=extra)
        want = base + i
        cons_l.wait(lambda: cons_l.count >= want, 10, f"latency message {i}")
        if time.monotonic() - t_lat0 > args.timeout:
            break
    lat = sorted(cons_l.latencies_ns)

    for c in (prod, cons):
        try:
            c.disconnect()
        except Exception:
            pass

    out = {
        "broker": f"{host}:{port}",
        "client": f"stomp.py {getattr(stomp, '__version__', '?')}",
        "destination": dest,
        "ack": args.ack,
        "persistent": args.persistent,
        "count": n,
        "size": args.size,
        "send_msgs_per_s": round(n / ((t_sent - t0) / 1e9), 1),
        "e2e_msgs_per_s": round(n / ((t_recv - t0) / 1e9), 1),
        "latency_count": len(lat),
        "latency_p50_us": round(percentile(lat, 50) / 1e3, 1) if lat else None,
        "latency_p99_us": round(percentile(lat, 99) / 1e3, 1) if lat else None,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

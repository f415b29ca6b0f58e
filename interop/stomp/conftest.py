"""Shared helpers for the STOMP interop suite.

The suite talks to a STOMP broker at $STOMP_HOST:$STOMP_PORT with third-party clients (stomp.py
for everything, stompest for a subset) and with a raw socket where a client library would hide
what is on the wire (heart-beat EOLs, malformed frames, what happens right before a close).

$STOMP_BROKER (rdmq | rabbitmq) names the broker under test. The tests are the same for both;
where the STOMP 1.2 spec leaves a choice to the broker and RabbitMQ (the reference) chooses
differently from rdmq, the test branches on BROKER with a comment citing the spec.

Run it with interop/stomp/run.sh HOST:PORT BROKER.
"""

import os
import re
import socket
import threading
import time
import uuid
from collections import deque

import pytest
import stomp

HOST = os.environ.get("STOMP_HOST", "127.0.0.1")
PORT = int(os.environ.get("STOMP_PORT", "61613"))
BROKER = os.environ.get("STOMP_BROKER", "rdmq")
if BROKER not in ("rdmq", "rabbitmq"):
    raise RuntimeError(f"STOMP_BROKER must be rdmq or rabbitmq, not {BROKER!r}")
RABBITMQ = BROKER == "rabbitmq"
RDMQ = BROKER == "rdmq"
LOGIN = os.environ.get("STOMP_LOGIN") or None
PASSCODE = os.environ.get("STOMP_PASSCODE") or None
# RabbitMQ maps the CONNECT `host` header to a virtual host and only "/" exists; rdmq accepts any.
VHOST = "/"
# How long to wait for something that should happen (a frame, a receipt).
TIMEOUT = float(os.environ.get("STOMP_TIMEOUT", "5"))
# How long to watch for something that should NOT happen (an extra delivery). Kept short: tests
# use receipts and in-order markers for the "nothing before X" cases wherever they can.
QUIET = float(os.environ.get("STOMP_QUIET", "0.4"))


def unique(kind, tag=""):
    """A destination nobody else uses: /queue/it-<tag>-<hex>, /topic/it.<tag>.<hex>."""
    h = uuid.uuid4().hex[:12]
    tag = re.sub(r"[^a-z0-9]", "", tag.lower())[:20] or "t"
    if kind == "topic":
        # Topic names are '.'-separated words (wildcards match words), so use '.' here.
        return f"/topic/it.{tag}.{h}"
    return f"/{kind}/it-{tag}-{h}"


def uid(prefix="x"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def queue_dest(request):
    return unique("queue", request.node.name)


@pytest.fixture
def topic_dest(request):
    return unique("topic", request.node.name)


# --------------------------------------------------------------------------------------------
# stomp.py


class Collector(stomp.ConnectionListener):
    """Records everything a stomp.py connection receives, with waits that time out."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected_frame = None
        self.messages = deque()  # MESSAGE frames not yet taken by next_message()
        self.all_messages = []
        self.receipts = []  # receipt-ids, in arrival order
        self.errors = []
        self.heartbeats = 0
        self.disconnected = False
        self.events = []  # ("receipt", id) / ("disconnected", None) in order

    def _add(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_connected(self, frame):
        self._add(lambda: setattr(self, "connected_frame", frame))

    def on_message(self, frame):
        def f():
            self.messages.append(frame)
            self.all_messages.append(frame)

        self._add(f)

    def on_receipt(self, frame):
        rid = frame.headers.get("receipt-id")

        def f():
            self.receipts.append(rid)
            self.events.append(("receipt", rid))

        self._add(f)

    def on_error(self, frame):
        self._add(lambda: self.errors.append(frame))

    def on_heartbeat(self):
        self._add(lambda: setattr(self, "heartbeats", self.heartbeats + 1))

    def on_disconnected(self):
        def f():
            self.disconnected = True
            self.events.append(("disconnected", None))

        self._add(f)

    def wait_for(self, pred, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; errors: "
                        f"{[(e.headers, e.body) for e in self.errors]}"
                    )
                self.cond.wait(left)

    def next_message(self, timeout=TIMEOUT):
        self.wait_for(lambda: self.messages, "a MESSAGE", timeout)
        with self.cond:
            return self.messages.popleft()

    def take_messages(self, n, timeout=TIMEOUT):
        self.wait_for(lambda: len(self.messages) >= n, f"{n} MESSAGEs (have {len(self.messages)})", timeout)
        with self.cond:
            return [self.messages.popleft() for _ in range(n)]

    def assert_no_message(self, within=QUIET):
        time.sleep(within)
        with self.cond:
            extra = list(self.messages)
        assert not extra, f"unexpected MESSAGE(s): {[(m.headers, m.body) for m in extra]}"

    def wait_receipt(self, rid, timeout=TIMEOUT):
        self.wait_for(lambda: rid in self.receipts, f"RECEIPT {rid}", timeout)

    def wait_error(self, timeout=TIMEOUT):
        self.wait_for(lambda: self.errors, "an ERROR frame", timeout)
        return self.errors[0]

    def wait_disconnected(self, timeout=TIMEOUT):
        self.wait_for(lambda: self.disconnected, "the connection to close", timeout)


CONNECTION_CLASSES = {
    "1.0": stomp.Connection10,
    "1.1": stomp.Connection11,
    "1.2": stomp.Connection12,
}


class Client:
    """A stomp.py connection plus a Collector, with receipt-confirmed operations."""

    def __init__(self, version="1.2", heartbeats=(0, 0)):
        self.version = version
        cls = CONNECTION_CLASSES[version]
        kwargs = dict(
            host_and_ports=[(HOST, PORT)],
            auto_decode=False,  # bodies stay bytes, so binary bodies can be compared exactly
            reconnect_attempts_max=1,
            timeout=TIMEOUT,
        )
        if version != "1.0":
            kwargs.update(heartbeats=heartbeats, vhost=VHOST)
        self.conn = cls(**kwargs)
        self.listener = Collector()
        self.conn.set_listener("collector", self.listener)

    # connection

    def connect(self, headers=None, with_connect_command=True):
        h = {"host": VHOST}
        h.update(headers or {})
        kwargs = {}
        if self.version != "1.0":
            kwargs["with_connect_command"] = with_connect_command
        self.conn.connect(LOGIN, PASSCODE, wait=False, headers=h, **kwargs)
        lst = self.listener
        lst.wait_for(lambda: lst.connected_frame is not None or lst.errors, "CONNECTED")
        if lst.connected_frame is None:
            raise AssertionError(f"CONNECT refused: {lst.errors[0].headers} {lst.errors[0].body!r}")
        return lst.connected_frame

    def disconnect(self, timeout=TIMEOUT):
        """DISCONNECT with a receipt; returns once the receipt came and the socket is closed."""
        if not self.conn.is_connected():
            self.abort_socket()
            return
        rid = uid("disconnect")
        # The protocol-level call sends the frame without blocking (the connection-level one
        # waits for the receiver thread, with no timeout); stomp.py closes the socket itself once
        # this receipt arrives.
        proto = {"1.0": stomp.protocol.Protocol10, "1.1": stomp.protocol.Protocol11,
                 "1.2": stomp.protocol.Protocol12}[self.version]
        proto.disconnect(self.conn, receipt=rid)
        try:
            if self.version != "1.0":
                self.listener.wait_receipt(rid, timeout)
        finally:
            self.abort_socket()

    def abort_socket(self):
        """Drop the TCP connection without DISCONNECT (a crashed client)."""
        try:
            self.conn.transport.disconnect_socket()
        except Exception:
            pass

    # operations; each waits for its receipt when receipt=True (the default for state changes)

    def _receipt(self, receipt):
        return uid("r") if receipt else None

    def subscribe(self, dest, sub_id=None, ack="auto", headers=None, receipt=True):
        sub_id = sub_id or uid("sub")
        rid = self._receipt(receipt)
        h = dict(headers or {})
        if rid:
            h["receipt"] = rid
        if self.version == "1.0":
            self.conn.subscribe(dest, id=sub_id, ack=ack, headers=h)
        else:
            self.conn.subscribe(dest, sub_id, ack=ack, headers=h)
        if rid:
            self.listener.wait_receipt(rid)
        return sub_id

    def unsubscribe(self, sub_id, headers=None, receipt=True):
        rid = self._receipt(receipt)
        h = dict(headers or {})
        if rid:
            h["receipt"] = rid
        self.conn.unsubscribe(id=sub_id, headers=h)
        if rid:
            self.listener.wait_receipt(rid)

    def send(self, dest, body, headers=None, receipt=False, transaction=None):
        rid = self._receipt(receipt)
        h = dict(headers or {})
        if rid:
            h["receipt"] = rid
        if transaction:
            h["transaction"] = transaction
        self.conn.send(dest, body, headers=h)
        if rid:
            self.listener.wait_receipt(rid)

    def ack(self, msg, transaction=None, receipt=True):
        rid = self._receipt(receipt)
        if self.version == "1.2":
            self.conn.ack(msg.headers["ack"], transaction=transaction, receipt=rid)
        else:
            self.conn.ack(msg.headers["message-id"], msg.headers["subscription"],
                          transaction=transaction, receipt=rid)
        if rid:
            self.listener.wait_receipt(rid)

    def nack(self, msg, transaction=None, receipt=True):
        rid = self._receipt(receipt)
        if self.version == "1.2":
            self.conn.nack(msg.headers["ack"], transaction=transaction, receipt=rid)
        else:
            self.conn.nack(msg.headers["message-id"], msg.headers["subscription"],
                           transaction=transaction, receipt=rid)
        if rid:
            self.listener.wait_receipt(rid)

    def begin(self, receipt=True):
        tx = uid("tx")
        rid = self._receipt(receipt)
        self.conn.begin(tx, headers={"receipt": rid} if rid else None)
        if rid:
            self.listener.wait_receipt(rid)
        return tx

    def commit(self, tx, receipt=True):
        rid = self._receipt(receipt)
        self.conn.commit(tx, headers={"receipt": rid} if rid else None)
        if rid:
            self.listener.wait_receipt(rid)

    def abort(self, tx, receipt=True):
        rid = self._receipt(receipt)
        self.conn.abort(tx, headers={"receipt": rid} if rid else None)
        if rid:
            self.listener.wait_receipt(rid)

    # conveniences

    def next_message(self, timeout=TIMEOUT):
        return self.listener.next_message(timeout)

    def take_messages(self, n, timeout=TIMEOUT):
        return self.listener.take_messages(n, timeout)

    def assert_no_message(self, within=QUIET):
        self.listener.assert_no_message(within)


@pytest.fixture
def client_factory():
    """make(version="1.2", heartbeats=(0, 0), connect=True) -> connected Client; all closed at teardown."""
    made = []

    def make(version="1.2", heartbeats=(0, 0), connect=True, headers=None):
        c = Client(version, heartbeats)
        made.append(c)
        if connect:
            c.connect(headers)
        return c

    yield make
    for c in made:
        try:
            if c.conn.is_connected():
                c.disconnect(timeout=2)
        except Exception:
            pass  # the test may have left it half-closed on purpose
        finally:
            c.abort_socket()


@pytest.fixture
def client(client_factory):
    return client_factory()


def bodies(msgs):
    return [m.body for m in msgs]


def drain_until(client, marker, timeout=TIMEOUT):
    """Messages received before the one whose body is `marker` (which is consumed too).

    Used to prove that something was NOT delivered without sleeping: a producer sends `marker`
    after the thing in question, and a queue keeps one producer's messages in order."""
    before = []
    deadline = time.monotonic() + timeout
    while True:
        m = client.next_message(max(0.01, deadline - time.monotonic()))
        if m.body == marker:
            return before, m
        before.append(m)


# --------------------------------------------------------------------------------------------
# raw socket


class RawFrame:
    def __init__(self, command, header_list, body):
        self.command = command
        self.header_list = header_list  # [(name, value)] in wire order, unescaped
        self.headers = {}
        for k, v in header_list:  # STOMP 1.2: the first occurrence of a repeated header wins
            self.headers.setdefault(k, v)
        self.body = body

    def __repr__(self):
        return f"RawFrame({self.command!r}, {self.header_list!r}, {self.body[:200]!r})"


_UNESCAPE = {b"\\n": b"\n", b"\\r": b"\r", b"\\c": b":", b"\\\\": b"\\"}


def unescape(raw: bytes) -> str:
    return re.sub(rb"\\.", lambda m: _UNESCAPE.get(m.group(0), m.group(0)), raw).decode("utf-8")


class RawStomp:
    """A STOMP client on a plain socket, for checks that need to see the wire."""

    def __init__(self, host=HOST, port=PORT):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.buf = b""
        self.eof = False
        self.eols = []  # monotonic times of EOLs received between frames (heart-beats)
        self.trailing_eols = 0  # EOLs that came in the same read right after a frame's NUL
        self.raw = b""  # everything received, for assertions on the exact bytes

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_frame(self, command, headers=(), body=b""):
        """headers: [(name, value)]. str names/values are escaped as STOMP 1.2 says (except in
        CONNECT, which is never escaped); bytes are written as given, for wire-level tests."""

        def enc(x):
            if isinstance(x, bytes):
                return x
            if command != "CONNECT":
                x = x.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace(":", "\\c")
            return x.encode("utf-8")

        out = command.encode() + b"\n"
        for k, v in headers:
            out += enc(k) + b":" + enc(v) + b"\n"
        self.send(out + b"\n" + body + b"\x00")

    def connect(self, version="1.2", heart_beat=None, extra=()):
        h = [("accept-version", version), ("host", VHOST)]
        if LOGIN is not None:
            h.append(("login", LOGIN))
        if PASSCODE is not None:
            h.append(("passcode", PASSCODE))
        if heart_beat:
            h.append(("heart-beat", heart_beat))
        h.extend(extra)
        self.send_frame("CONNECT", h)
        f = self.read_frame()
        assert f is not None and f.command == "CONNECTED", f"expected CONNECTED, got {f!r}"
        return f

    def _fill(self, deadline):
        """Read more bytes; False on EOF. Raises TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.raw += data
        self.buf += data
        return True

    def read_frame(self, timeout=TIMEOUT):
        """The next frame, or None if the connection closed first. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            # EOLs before a frame are heart-beats (or the optional EOLs after a frame's NUL).
            while self.buf[:1] == b"\n" or self.buf[:2] == b"\r\n":
                self.eols.append(time.monotonic())
                self.buf = self.buf[1:] if self.buf[:1] == b"\n" else self.buf[2:]
            m = re.search(rb"\r?\n\r?\n", self.buf)
            if m:
                head = self.buf[: m.start()]
                lines = re.split(rb"\r?\n", head)
                command = lines[0].decode()
                header_list = []
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    if command in ("CONNECTED",):  # not escaped (spec: CONNECT/CONNECTED)
                        header_list.append((k.decode(), v.decode()))
                    else:
                        header_list.append((unescape(k), unescape(v)))
                hdrs = dict(header_list[::-1])
                start = m.end()
                if "content-length" in hdrs:
                    end = start + int(hdrs["content-length"])
                    if len(self.buf) > end:
                        assert self.buf[end : end + 1] == b"\x00", "no NUL after content-length bytes"
                        body = self.buf[start:end]
                        self.buf = self.buf[end + 1 :]
                        self._strip_trailing_eols()
                        return RawFrame(command, header_list, body)
                else:
                    nul = self.buf.find(b"\x00", start)
                    if nul >= 0:
                        body = self.buf[start:nul]
                        self.buf = self.buf[nul + 1 :]
                        self._strip_trailing_eols()
                        return RawFrame(command, header_list, body)
            if self.eof or not self._fill(deadline):
                return None

    def _strip_trailing_eols(self):
        # A frame MAY be followed by EOLs (RabbitMQ writes one after every frame). Those that
        # arrived together with the frame are counted as such, not as heart-beats.
        while self.buf[:1] == b"\n" or self.buf[:2] == b"\r\n":
            self.trailing_eols += 1
            self.buf = self.buf[1:] if self.buf[:1] == b"\n" else self.buf[2:]

    def read_until_eof(self, timeout=TIMEOUT):
        """All frames until the server closes; raises TimeoutError if it does not close in time."""
        frames = []
        while True:
            f = self.read_frame(timeout)
            if f is None:
                return frames
            frames.append(f)

    def wait_closed(self, timeout):
        """Seconds until the server closed the connection (frames/EOLs are consumed and kept).
        Raises AssertionError if still open after timeout."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        frames = []
        try:
            while True:
                f = self.read_frame(max(0.001, deadline - time.monotonic()))
                if f is None:
                    return time.monotonic() - t0, frames
                frames.append(f)
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout}s; frames: {frames}") from None

    def is_open_and_serving(self):
        """True if a SEND with a receipt is answered by that RECEIPT."""
        rid = uid("alive")
        try:
            # To a topic nobody subscribes to: answered like any SEND, and it creates no queue.
            self.send_frame("SEND", [("destination", "/topic/it.alive"), ("receipt", rid)], b"x")
            f = self.read_frame(TIMEOUT)
        except (OSError, TimeoutError):
            return False
        return f is not None and f.command == "RECEIPT" and f.headers.get("receipt-id") == rid


@pytest.fixture
def raw_factory():
    made = []

    def make():
        r = RawStomp()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# --------------------------------------------------------------------------------------------
# session check: fail fast with a clear message when nothing listens


def pytest_sessionstart(session):
    try:
        socket.create_connection((HOST, PORT), timeout=3).close()
    except OSError as e:
        raise pytest.UsageError(f"no STOMP broker at {HOST}:{PORT} ({e}); start one first") from None


def pytest_report_header(config):
    return f"STOMP broker: {BROKER} at {HOST}:{PORT} (login {'set' if LOGIN else 'none'})"

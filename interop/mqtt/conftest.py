"""Shared helpers for the MQTT interop suite.

The suite talks to an MQTT broker at $MQTT_HOST:$MQTT_PORT with third-party clients: paho-mqtt
(MQTT 3.1.1 and 5.0) for most tests, mosquitto_pub/mosquitto_sub (the Mosquitto project's
command-line clients) for a subset, rumqttc (Rust) through interop/mqtt/rumqttc-check; and with a
raw socket (RawMqtt below) where a client library would hide what is on the wire (packet ids and
DUP flags, what the broker sends right before a close, malformed packets, flow control).

$MQTT_BROKER (rdmq | mosquitto) names the broker under test. The tests are the same for both;
where the MQTT spec leaves a choice to the broker and Mosquitto (the reference) chooses
differently from rdmq, the test branches on BROKER with a comment citing the spec section.
$MQTT_RESTART_CMD, if set, is a shell command that restarts the broker keeping its data (same
port); the across-restart tests are SKIPPED without it.

Run it with interop/mqtt/run.sh HOST:PORT BROKER.
"""

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections import deque

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = os.environ.get("MQTT_HOST", "127.0.0.1")
PORT = int(os.environ.get("MQTT_PORT", "1883"))
BROKER = os.environ.get("MQTT_BROKER", "rdmq")
if BROKER not in ("rdmq", "mosquitto"):
    raise RuntimeError(f"MQTT_BROKER must be rdmq or mosquitto, not {BROKER!r}")
MOSQUITTO = BROKER == "mosquitto"
RDMQ = BROKER == "rdmq"
RESTART_CMD = os.environ.get("MQTT_RESTART_CMD") or None
# How long to wait for something that should happen (a packet, a delivery, a close).
TIMEOUT = float(os.environ.get("MQTT_TIMEOUT", "5"))
# How long to watch for something that should NOT happen (an extra delivery). Kept short: tests
# use in-order markers for the "nothing before X" cases wherever they can.
QUIET = float(os.environ.get("MQTT_QUIET", "0.5"))

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
VERSION_NAME = {V311: "v311", V5: "v5"}


@pytest.fixture(params=[V311, V5], ids=["v311", "v5"])
def version(request):
    """Parametrizes a test over MQTT 3.1.1 and 5.0."""
    return request.param


def uid(prefix="c"):
    """A client id nobody else uses (23 characters at most: the length every 3.1.1 server MUST
    accept, MQTT-3.1.3-5)."""
    return f"{prefix[:10]}-{uuid.uuid4().hex[:12]}"


def unique_topic(tag="t"):
    """A topic nobody else uses: it/<tag>/<hex>. Reruns against the same broker (whose retained
    messages and sessions persist) never see an earlier run's messages."""
    tag = re.sub(r"[^a-z0-9]", "", tag.lower())[:24] or "t"
    return f"it/{tag}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def topic(request):
    return unique_topic(request.node.name)


def props_dict(props):
    """paho Properties -> {name: value} (names without spaces, as paho's attributes are)."""
    if props is None:
        return {}
    out = {}
    for name in props.names:
        n = name.replace(" ", "")
        if hasattr(props, n):
            out[n] = getattr(props, n)
    return out


def make_props(packet_type, **kw):
    """make_props(PacketTypes.PUBLISH, MessageExpiryInterval=1, UserProperty=[("a", "b")])"""
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# --------------------------------------------------------------------------------------------
# paho-mqtt


class Msg:
    def __init__(self, m):
        self.topic = m.topic
        self.payload = m.payload
        self.qos = m.qos
        self.retain = bool(m.retain)
        self.dup = bool(m.dup)
        self.mid = m.mid
        self.props = props_dict(getattr(m, "properties", None))
        self.at = time.monotonic()

    def __repr__(self):
        return (f"Msg({self.topic!r}, {self.payload[:60]!r}, qos={self.qos}, retain={self.retain}, "
                f"dup={self.dup}, props={self.props})")


class Paho:
    """A paho-mqtt client with its own network-loop thread and bounded waits.

    The loop thread runs paho's loop() until the connection ends and never reconnects (paho's
    loop_start() would, and a reconnect with the same client id changes what a test checks)."""

    def __init__(self, version=V5, client_id=None, clean=True, manual_ack=False):
        self.version = version
        self.client_id = uid("paho") if client_id is None else client_id
        kwargs = dict(client_id=self.client_id, protocol=version, manual_ack=manual_ack)
        if version == V311:
            kwargs["clean_session"] = clean
        self.clean = clean
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.cond = threading.Condition()
        self.connack = None  # (session_present, reason code int, props dict)
        self.messages = deque()  # not yet taken by next_message()
        self.all_messages = []
        self.subacks = {}  # mid -> [int codes]
        self.unsubacks = {}  # mid -> [int codes]
        self.published = {}  # mid -> reason code int (PUBACK/PUBCOMP, or sent for QoS 0)
        self.disconnects = []  # [(reason code int, props dict, from_broker)]
        self.thread = None
        self._stop = False
        c = self.c
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_publish = self._on_publish
        c.on_disconnect = self._on_disconnect

    # callbacks (loop thread)

    def _add(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def _on_connect(self, client, userdata, flags, rc, props):
        self._add(lambda: setattr(self, "connack", (bool(flags.session_present), rc.value, props_dict(props))))

    def _on_message(self, client, userdata, m):
        msg = Msg(m)

        def f():
            self.messages.append(msg)
            self.all_messages.append(msg)

        self._add(f)

    def _on_subscribe(self, client, userdata, mid, rcs, props):
        self._add(lambda: self.subacks.__setitem__(mid, [r.value for r in rcs]))

    def _on_unsubscribe(self, client, userdata, mid, rcs, props):
        self._add(lambda: self.unsubacks.__setitem__(mid, [r.value for r in rcs]))

    def _on_publish(self, client, userdata, mid, rc, props):
        self._add(lambda: self.published.__setitem__(mid, rc.value))

    def _on_disconnect(self, client, userdata, flags, rc, props):
        self._add(lambda: self.disconnects.append((rc.value, props_dict(props), flags.is_disconnect_packet_from_server)))

    def _loop(self):
        while not self._stop:
            rc = self.c.loop(timeout=0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
        self._add(lambda: None)

    # waits

    def wait_for(self, pred, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.client_id}: timed out after {timeout}s waiting for {what}")
                self.cond.wait(left)

    # connection

    def connect(self, keepalive=30, session_expiry=None, properties=None, will=None, expect_ok=True):
        """Connects and waits for CONNACK; returns (session_present, reason_code, props).
        v5: clean=True/False is Clean Start; session_expiry sets Session Expiry Interval.
        will: dict(topic=, payload=, qos=, retain=, props=)."""
        kw = {}
        if self.version == V5:
            kw["clean_start"] = self.clean
            if session_expiry is not None or properties:
                properties = properties or Properties(PacketTypes.CONNECT)
                if session_expiry is not None:
                    properties.SessionExpiryInterval = session_expiry
            if properties is not None:
                kw["properties"] = properties
        if will:
            self.c.will_set(will["topic"], will.get("payload", b"will"), will.get("qos", 0),
                            will.get("retain", False), properties=will.get("props"))
        self.c.connect(HOST, PORT, keepalive=keepalive, **kw)
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name=f"paho-{self.client_id}", daemon=True)
        self.thread.start()
        self.wait_for(lambda: self.connack is not None or self.disconnects, "CONNACK")
        if self.connack is None:
            raise AssertionError(f"{self.client_id}: connection closed before CONNACK: {self.disconnects}")
        if expect_ok:
            assert self.connack[1] == 0, f"CONNACK refused: {self.connack}"
        return self.connack

    @property
    def session_present(self):
        return self.connack[0]

    @property
    def connack_props(self):
        return self.connack[2]

    def is_connected(self):
        # paho's is_connected() stays True after a DISCONNECT from the server (paho 2.2 closes
        # the socket but keeps its state), so on_disconnect having been called counts too.
        with self.cond:
            return self.c.is_connected() and not self.disconnects

    def disconnect(self, properties=None, reason=None, timeout=TIMEOUT):
        """A clean DISCONNECT; returns once paho has sent it and closed the socket."""
        if self.thread is None:
            return
        if self.is_connected():
            kw = {}
            if self.version == V5 and reason is not None:
                from paho.mqtt.reasoncodes import ReasonCode

                kw["reasoncode"] = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
            if self.version == V5 and properties is not None:
                kw["properties"] = properties
            self.c.disconnect(**kw)
        self.thread.join(timeout)
        self._stop = True
        self.thread.join(1)
        assert not self.thread.is_alive(), f"{self.client_id}: network loop did not end"

    def kill(self):
        """Drop the TCP connection without DISCONNECT (a crashed client or a lost network).
        shutdown() sends the FIN at once (the loop thread keeps a valid fd and sees EOF)."""
        s = self.c.socket()
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.thread is not None:
            self._stop = True
            self.thread.join(TIMEOUT)

    def wait_disconnected(self, timeout=TIMEOUT):
        """Waits until the connection is gone; returns the (reason code, props, from_broker)."""
        self.wait_for(lambda: self.disconnects, "the connection to close", timeout)
        return self.disconnects[0]

    def close(self):
        """Teardown: clean disconnect if still connected, else just end the loop."""
        try:
            if self.thread is not None and self.is_connected():
                self.disconnect(timeout=2)
        except Exception:
            pass
        self._stop = True
        if self.thread is not None:
            self.thread.join(2)
        try:
            s = self.c.socket()
            if s is not None:
                s.close()
        except Exception:
            pass

    # operations (each waits for its acknowledgement)

    def subscribe(self, filt, qos=1, options=None, properties=None, expect=None):
        """Subscribes one filter; returns the SUBACK codes ([granted QoS] on success). If expect
        is given, asserts the codes equal it; by default asserts the granted QoS equals qos."""
        if self.version == V5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            opts = options or SubscribeOptions(qos=qos)
            rc, mid = self.c.subscribe((filt, opts), properties=properties)
        else:
            rc, mid = self.c.subscribe(filt, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe: {rc}"
        self.wait_for(lambda: mid in self.subacks, f"SUBACK for {filt!r}")
        codes = self.subacks[mid]
        want = expect if expect is not None else [options.QoS if options else qos]
        assert codes == want, f"SUBACK for {filt!r}: {codes}, wanted {want}"
        return codes

    def unsubscribe(self, filt):
        rc, mid = self.c.unsubscribe(filt)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe: {rc}"
        self.wait_for(lambda: mid in self.unsubacks, f"UNSUBACK for {filt!r}")
        return self.unsubacks[mid]

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, wait=True):
        """Publishes; with wait (the default) returns once the flow is complete: QoS 0 written,
        QoS 1 PUBACK, QoS 2 PUBCOMP. Returns the mid."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish: {info.rc}"
        if wait:
            self.wait_for(lambda: info.mid in self.published, f"the {['send', 'PUBACK', 'PUBCOMP'][qos]} of mid {info.mid}")
            rc = self.published[info.mid]
            assert rc < 0x80, f"publish to {topic!r} refused: reason {rc:#x}"
        return info.mid

    def next_message(self, timeout=TIMEOUT):
        self.wait_for(lambda: self.messages, "a PUBLISH", timeout)
        with self.cond:
            return self.messages.popleft()

    def take_messages(self, n, timeout=TIMEOUT):
        self.wait_for(lambda: len(self.messages) >= n, f"{n} PUBLISHes (have {len(self.messages)})", timeout)
        with self.cond:
            return [self.messages.popleft() for _ in range(n)]

    def assert_no_message(self, within=QUIET):
        time.sleep(within)
        with self.cond:
            extra = list(self.messages)
        assert not extra, f"unexpected PUBLISH(es): {extra}"

    def drain_until(self, marker, timeout=TIMEOUT):
        """Messages received before the one whose payload is `marker` (consumed too).

        Proves that something was NOT delivered without sleeping: a publisher sends `marker`
        after the thing in question; one publisher's messages on one topic arrive in order
        (spec 4.6 Message ordering)."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.next_message(max(0.01, deadline - time.monotonic()))
            if m.payload == marker:
                return before, m
            before.append(m)


@pytest.fixture
def paho_factory():
    """make(version, client_id=None, clean=True, connect=True, **connect_kw) -> Paho; all are
    closed at teardown."""
    made = []

    def make(version=V5, client_id=None, clean=True, connect=True, manual_ack=False, **kw):
        c = Paho(version, client_id=client_id, clean=clean, manual_ack=manual_ack)
        made.append(c)
        if connect:
            c.connect(**kw)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def end_sessions():
    """end_sessions.add(version, client_id): at teardown the persistent session is ended (a
    clean connect, 5.0 with Session Expiry 0), so reruns leave nothing behind on the broker."""

    class Sessions(list):
        def add(self, version, client_id):
            self.append((version, client_id))

    sessions = Sessions()
    yield sessions
    for version, cid in sessions:
        c = Paho(version, client_id=cid, clean=True)
        try:
            c.connect()
            c.disconnect(timeout=2)
        except Exception:
            pass
        finally:
            c.close()


# --------------------------------------------------------------------------------------------
# raw socket: a small MQTT 3.1.1 / 5.0 codec


CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
                7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
                12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}

# MQTT 5.0 properties (spec 2.2.2.2): id -> (name, kind)
PROPS = {
    0x01: ("PayloadFormatIndicator", "byte"), 0x02: ("MessageExpiryInterval", "u32"),
    0x03: ("ContentType", "str"), 0x08: ("ResponseTopic", "str"), 0x09: ("CorrelationData", "bin"),
    0x0B: ("SubscriptionIdentifier", "varint"), 0x11: ("SessionExpiryInterval", "u32"),
    0x12: ("AssignedClientIdentifier", "str"), 0x13: ("ServerKeepAlive", "u16"),
    0x15: ("AuthenticationMethod", "str"), 0x16: ("AuthenticationData", "bin"),
    0x17: ("RequestProblemInformation", "byte"), 0x18: ("WillDelayInterval", "u32"),
    0x19: ("RequestResponseInformation", "byte"), 0x1A: ("ResponseInformation", "str"),
    0x1C: ("ServerReference", "str"), 0x1F: ("ReasonString", "str"),
    0x21: ("ReceiveMaximum", "u16"), 0x22: ("TopicAliasMaximum", "u16"), 0x23: ("TopicAlias", "u16"),
    0x24: ("MaximumQoS", "byte"), 0x25: ("RetainAvailable", "byte"), 0x26: ("UserProperty", "pair"),
    0x27: ("MaximumPacketSize", "u32"), 0x28: ("WildcardSubscriptionAvailable", "byte"),
    0x29: ("SubscriptionIdentifierAvailable", "byte"), 0x2A: ("SharedSubscriptionAvailable", "byte"),
}
PROP_IDS = {name: (pid, kind) for pid, (name, kind) in PROPS.items()}


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mqtt_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def encode_props(props):
    """{name: value} (UserProperty / SubscriptionIdentifier: a list) -> length-prefixed bytes."""
    out = b""
    for name, value in (props or {}).items():
        pid, kind = PROP_IDS[name]
        values = value if isinstance(value, list) else [value]
        for v in values:
            out += varint(pid)
            if kind == "byte":
                out += bytes([v])
            elif kind == "u16":
                out += struct.pack("!H", v)
            elif kind == "u32":
                out += struct.pack("!I", v)
            elif kind == "varint":
                out += varint(v)
            elif kind in ("str", "bin"):
                out += mqtt_str(v)
            elif kind == "pair":
                out += mqtt_str(v[0]) + mqtt_str(v[1])
    return varint(len(out)) + out


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def left(self):
        return len(self.data) - self.pos

    def u8(self):
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u16(self):
        v = struct.unpack_from("!H", self.data, self.pos)[0]
        self.pos += 2
        return v

    def u32(self):
        v = struct.unpack_from("!I", self.data, self.pos)[0]
        self.pos += 4
        return v

    def varint(self):
        mult, v = 1, 0
        for _ in range(4):
            b = self.u8()
            v += (b & 0x7F) * mult
            if not b & 0x80:
                return v
            mult *= 128
        raise ValueError("malformed variable byte integer")

    def bin(self):
        n = self.u16()
        v = self.data[self.pos : self.pos + n]
        if len(v) != n:
            raise ValueError("truncated string")
        self.pos += n
        return v

    def str(self):
        return self.bin().decode("utf-8")

    def rest(self):
        v = self.data[self.pos :]
        self.pos = len(self.data)
        return v

    def props(self):
        n = self.varint()
        end = self.pos + n
        out = {}
        while self.pos < end:
            pid = self.varint()
            name, kind = PROPS[pid]
            v = {"byte": self.u8, "u16": self.u16, "u32": self.u32, "varint": self.varint,
                 "str": self.str, "bin": self.bin, "pair": lambda: (self.str(), self.str())}[kind]()
            if name in ("UserProperty", "SubscriptionIdentifier"):
                out.setdefault(name, []).append(v)
            else:
                out[name] = v
        return out


class Packet:
    """A received packet, decoded: .type, .flags, .body and per type:
    CONNACK: session_present, code, props; PUBLISH: dup, qos, retain, topic, pid, props, payload;
    PUBACK..PUBCOMP: pid, code, props; SUBACK/UNSUBACK: pid, props, codes; DISCONNECT: code, props."""

    def __init__(self, ptype, flags, body, v5):
        self.type, self.flags, self.body = ptype, flags, body
        self.props = {}
        self.code = None
        r = Reader(body)
        if ptype == CONNACK:
            self.session_present = bool(r.u8() & 1)
            self.code = r.u8()
            if v5 and r.left():
                self.props = r.props()
        elif ptype == PUBLISH:
            self.dup = bool(flags & 8)
            self.qos = (flags >> 1) & 3
            self.retain = bool(flags & 1)
            self.topic = r.str()
            self.pid = r.u16() if self.qos else None
            if v5:
                self.props = r.props()
            self.payload = r.rest()
        elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            self.pid = r.u16()
            self.code = 0
            if v5 and r.left():
                self.code = r.u8()
                if r.left():
                    self.props = r.props()
        elif ptype in (SUBACK, UNSUBACK):
            self.pid = r.u16()
            if v5:
                self.props = r.props()
            self.codes = list(r.rest())
        elif ptype == DISCONNECT:
            self.code = 0
            if r.left():
                self.code = r.u8()
                if r.left():
                    self.props = r.props()

    @property
    def name(self):
        return PACKET_NAMES.get(self.type, f"type{self.type}")

    def __repr__(self):
        extra = ""
        if self.type == PUBLISH:
            extra = (f" {self.topic!r} q{self.qos} dup={int(self.dup)} retain={int(self.retain)} "
                     f"pid={self.pid} {self.payload[:40]!r}")
        elif self.type in (SUBACK, UNSUBACK):
            extra = f" pid={self.pid} codes={[hex(c) for c in self.codes]}"
        elif self.code is not None:
            extra = f" code={self.code:#x}"
        if self.props:
            extra += f" props={self.props}"
        return f"<{self.name}{extra}>"


class RawMqtt:
    """An MQTT client on a plain socket, for checks that need to see (or break) the wire."""

    def __init__(self, version=V5, host=None, port=None):
        self.v5 = version == V5
        self.version = version
        self.sock = socket.create_connection((host or HOST, port or PORT), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False
        self.next_pid = 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with a RST, without DISCONNECT."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_packet(self, ptype, flags, body):
        self.send(bytes([(ptype << 4) | flags]) + varint(len(body)) + body)

    def pid(self):
        p = self.next_pid
        self.next_pid = self.next_pid % 65535 + 1
        return p

    # CONNECT

    def connect_bytes(self, client_id="", clean=True, keepalive=60, props=None, will=None,
                      username=None, password=None, proto_name="MQTT", level=None):
        level = level if level is not None else (5 if self.v5 else 4)
        flags = 0x02 if clean else 0
        payload = mqtt_str(client_id)
        if will:
            flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
            if self.v5:
                payload += encode_props(will.get("props"))
            payload += mqtt_str(will["topic"]) + mqtt_str(will.get("payload", b"will"))
        if username is not None:
            flags |= 0x80
            payload += mqtt_str(username)
        if password is not None:
            flags |= 0x40
            payload += mqtt_str(password)
        var = mqtt_str(proto_name) + bytes([level, flags]) + struct.pack("!H", keepalive)
        if self.v5:
            var += encode_props(props)
        body = var + payload
        return bytes([CONNECT << 4]) + varint(len(body)) + body

    def connect(self, client_id=None, clean=True, keepalive=60, props=None, will=None, expect_code=0):
        """Sends CONNECT, reads CONNACK; asserts its code is expect_code (None: any)."""
        self.client_id = uid("raw") if client_id is None else client_id
        self.send(self.connect_bytes(self.client_id, clean, keepalive, props, will))
        p = self.read_packet()
        assert p is not None and p.type == CONNACK, f"expected CONNACK, got {p!r}"
        if expect_code is not None:
            assert p.code == expect_code, f"CONNACK code {p.code:#x}, wanted {expect_code:#x}: {p!r}"
        return p

    # other packets

    def subscribe(self, filters, props=None, pid=None, expect=None):
        """filters: [(filter, options byte)] (options = QoS in 3.1.1). Returns the SUBACK."""
        pid = pid or self.pid()
        body = struct.pack("!H", pid)
        if self.v5:
            body += encode_props(props)
        for f, opts in filters:
            body += mqtt_str(f) + bytes([opts])
        self.send_packet(SUBSCRIBE, 2, body)
        p = self.read_until(lambda p: p.type == SUBACK, "SUBACK")
        assert p.pid == pid, p
        if expect is not None:
            assert p.codes == expect, f"SUBACK {p!r}, wanted codes {expect}"
        return p

    def publish(self, topic, payload=b"", qos=0, retain=False, dup=False, pid=None, props=None):
        """Sends a PUBLISH (no wait); returns the packet id used (None for QoS 0)."""
        if qos and pid is None:
            pid = self.pid()
        body = mqtt_str(topic)
        if qos:
            body += struct.pack("!H", pid)
        if self.v5:
            body += encode_props(props)
        body += payload
        self.send_packet(PUBLISH, (8 if dup else 0) | (qos << 1) | (1 if retain else 0), body)
        return pid

    def ack(self, ptype, pid, code=None):
        """PUBACK / PUBREC / PUBREL / PUBCOMP for pid."""
        body = struct.pack("!H", pid)
        if self.v5 and code:
            body += bytes([code])
        self.send_packet(ptype, 2 if ptype == PUBREL else 0, body)

    def ping(self):
        self.send_packet(PINGREQ, 0, b"")

    def disconnect(self, code=0, props=None):
        body = b""
        if self.v5 and (code or props):
            body = bytes([code]) + (encode_props(props) if props else b"")
        self.send_packet(DISCONNECT, 0, body)

    # reading

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_packet(self, timeout=TIMEOUT):
        """The next packet, or None if the connection closed first. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                complete = False
                while i < len(self.buf) and i <= 4:
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        complete = True
                        break
                if complete and len(self.buf) >= i + n:
                    h = self.buf[0]
                    body = self.buf[i : i + n]
                    self.buf = self.buf[i + n :]
                    return Packet(h >> 4, h & 0x0F, body, self.v5)
            if self.eof or not self._fill(deadline):
                return None

    def read_until(self, pred, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                p = self.read_packet(max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}; got {seen}") from None
            if p is None:
                raise AssertionError(f"connection closed while waiting for {what}; got {seen}")
            if pred(p):
                return p
            seen.append(p)

    def packets_within(self, seconds):
        """All packets that arrive within `seconds` (stops early at EOF)."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                p = self.read_packet(max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                return out
            if p is None:
                return out
            out.append(p)

    def wait_closed(self, timeout=TIMEOUT):
        """(seconds until the server closed the connection, packets received before). Raises
        AssertionError if still open after timeout."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        got = []
        try:
            while True:
                p = self.read_packet(max(0.001, deadline - time.monotonic()))
                if p is None:
                    return time.monotonic() - t0, got
                got.append(p)
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout}s; received {got}") from None

    def is_open_and_serving(self):
        """True if a PINGREQ is answered by PINGRESP."""
        try:
            self.ping()
            p = self.read_packet(TIMEOUT)
        except (OSError, TimeoutError):
            return False
        return p is not None and p.type == PINGRESP


@pytest.fixture
def raw_factory():
    """make(version=V5) -> RawMqtt (not connected); all closed at teardown."""
    made = []

    def make(version=V5):
        r = RawMqtt(version)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def broker_still_serves(version=V5):
    """A new connection is accepted and answered: the broker survived what the test did."""
    r = RawMqtt(version)
    try:
        r.connect()
        assert r.is_open_and_serving(), "broker did not answer PINGREQ on a fresh connection"
        r.disconnect()
    finally:
        r.close()


# --------------------------------------------------------------------------------------------
# broker restart


def wait_port(timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, PORT), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"broker not accepting on {HOST}:{PORT} {timeout}s after restart") from None
            time.sleep(0.05)


@pytest.fixture
def restart_broker():
    """restart() runs $MQTT_RESTART_CMD (restart keeping the data, same port) and waits until
    the port accepts. SKIPPED without MQTT_RESTART_CMD."""
    if not RESTART_CMD:
        pytest.skip("needs MQTT_RESTART_CMD (a command that restarts the broker keeping its data, "
                    "e.g. 'interop/mqtt/mosquitto.sh restart'); run.sh passes it through")

    def restart():
        r = subprocess.run(RESTART_CMD, shell=True, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"MQTT_RESTART_CMD failed ({r.returncode}): {r.stderr[-2000:]}"
        wait_port()

    return restart


# --------------------------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub


def cli_or_skip(name):
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} not installed (Debian: apt-get install mosquitto-clients; "
                    "interop/mqtt/mosquitto.sh start installs it)")
    return path


def cli_version(version):
    return "mqttv311" if version == V311 else "mqttv5"


# --------------------------------------------------------------------------------------------
# session check: fail fast with a clear message when nothing listens


def pytest_sessionstart(session):
    try:
        socket.create_connection((HOST, PORT), timeout=3).close()
    except OSError as e:
        raise pytest.UsageError(f"no MQTT broker at {HOST}:{PORT} ({e}); start one first") from None


def pytest_report_header(config):
    return (f"MQTT broker: {BROKER} at {HOST}:{PORT}; restart command: "
            f"{RESTART_CMD or 'none (across-restart tests skip)'}")

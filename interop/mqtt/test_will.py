"""Will messages: sent on an abnormal close, not on a clean DISCONNECT; 5.0 will delay."""

import time

import pytest

from conftest import (
    MOSQUITTO,
    QUIET,
    V5,
    PacketTypes,
    broker_still_serves,
    make_props,
    uid,
    unique_topic,
)


def test_will_on_abnormal_close(paho_factory, topic, version):
    """The connection closes without DISCONNECT: the will is published (3.1.1 3.1.2.5,
    5.0 3.1.2.5), with its QoS, and RETAIN 0 to the existing subscription."""
    watch = paho_factory(version)
    watch.subscribe(topic, 2)
    w = paho_factory(version, will=dict(topic=topic, payload=b"gone", qos=1))
    w.kill()
    m = watch.next_message()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"gone", 1, False), m
    watch.assert_no_message(0.2)  # once


def test_no_will_on_clean_disconnect(paho_factory, topic, version):
    """DISCONNECT (5.0: reason 0x00) discards the will (3.1.1 MQTT-3.14.4-3, 5.0 MQTT-3.14.4-3)."""
    watch = paho_factory(version)
    watch.subscribe(topic, 1)
    w = paho_factory(version, will=dict(topic=topic, payload=b"must-not-appear", qos=1))
    w.disconnect()
    watch.assert_no_message(QUIET)


def test_will_on_protocol_error(raw_factory, paho_factory, topic, version):
    """A server-side close for a protocol error publishes the will (3.1.1 3.1.2.5: "The Server
    closes the Network Connection because of a protocol error"; 5.0 3.1.2.5)."""
    watch = paho_factory(version)
    watch.subscribe(topic, 1)
    r = raw_factory(version)
    r.connect(will=dict(topic=topic, payload=b"bad-client", qos=1))
    r.send(bytes([0x32 | 0x06, 3, 0, 1, ord("x")]))  # PUBLISH with QoS 3: malformed
    r.wait_closed()
    m = watch.next_message()
    assert (m.payload, m.qos) == (b"bad-client", 1), m
    broker_still_serves(version)


def test_retained_will(paho_factory, topic, version):
    """A will with the retain flag becomes the topic's retained message."""
    w = paho_factory(version, will=dict(topic=topic, payload=b"retained-will", qos=1, retain=True))
    w.kill()
    late = paho_factory(version)
    deadline = time.monotonic() + 5
    while True:  # the will is published asynchronously after the close
        late.subscribe(topic, 1)
        try:
            m = late.next_message(timeout=0.3)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    assert (m.payload, m.retain) == (b"retained-will", True), m
    late.publish(topic, b"", qos=1, retain=True)  # clear


def test_v5_will_on_disconnect_with_will_message(paho_factory, topic):
    """5.0 DISCONNECT reason 0x04 (Disconnect with Will Message): the will is published."""
    watch = paho_factory(V5)
    watch.subscribe(topic, 1)
    w = paho_factory(V5, will=dict(topic=topic, payload=b"asked-for", qos=1))
    w.disconnect(reason=0x04)
    assert watch.next_message().payload == b"asked-for"


def _will(topic, payload, delay):
    return dict(topic=topic, payload=payload, qos=1,
                props=make_props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay))


def test_v5_will_delay(paho_factory):
    """Will Delay Interval 2 s with a session that outlives it (expiry 10 s): the will comes
    after the delay (5.0 3.1.3.2.2), and not at all if the client reconnects to the session
    within the delay ("If a new Network Connection to this Session is made before the Will Delay
    Interval has passed, the Server MUST NOT send the Will Message")."""
    t_late, t_back = unique_topic("willdelay"), unique_topic("willback")
    watch = paho_factory(V5)
    watch.subscribe(t_late, 1)
    watch.subscribe(t_back, 1)
    late = paho_factory(V5, session_expiry=10, will=_will(t_late, b"after-delay", 2))
    cid = uid("back")
    back = paho_factory(V5, client_id=cid, clean=False, session_expiry=10, will=_will(t_back, b"must-not-appear", 2))
    t0 = time.monotonic()
    late.kill()
    back.kill()
    time.sleep(0.3)
    again = paho_factory(V5, client_id=cid, clean=False, session_expiry=10)
    assert again.session_present
    m = watch.next_message(timeout=6)
    after = m.at - t0
    assert (m.topic, m.payload) == (t_late, b"after-delay"), m
    # Not before the delay (less 1 s: Mosquitto counts in whole seconds, observed 2.0-2.3 s),
    # and not long after it.
    assert 1.0 <= after <= 5.0, after
    watch.assert_no_message(max(0.5, 3.0 - (time.monotonic() - t0)))
    again.disconnect(properties=make_props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))


def test_v5_will_delay_ends_with_session(paho_factory, topic):
    """Will Delay 5 s but Session Expiry 1 s: the will is sent when the session ends, before
    the delay ("until the Will Delay Interval has passed or the Session ends, whichever happens
    first", 5.0 3.1.3.2.2)."""
    watch = paho_factory(V5)
    watch.subscribe(topic, 1)
    w = paho_factory(V5, session_expiry=1, will=_will(topic, b"session-ended", 5))
    t0 = time.monotonic()
    w.kill()
    m = watch.next_message(timeout=6)
    assert m.payload == b"session-ended"
    # Mosquitto 2.0.11 counts in whole seconds: observed 1.0-2.0 s.
    assert m.at - t0 < 4.0, m.at - t0


@pytest.mark.xfail(MOSQUITTO, strict=True, reason=(
    "Mosquitto 2.0.11 waits for the Will Delay (observed 2.2-2.9 s) although Session Expiry 0 "
    "ends the session at the close (5.0 3.1.2.11.2), and 3.1.3.2.2 says whichever comes first"))
def test_v5_will_delay_without_session_is_immediate(paho_factory, topic):
    """Will Delay 2 s with Session Expiry 0: the session ends when the connection closes, so
    the will is sent then (5.0 3.1.3.2.2: the delay or the end of the session, whichever
    happens first)."""
    watch = paho_factory(V5)
    watch.subscribe(topic, 1)
    w = paho_factory(V5, session_expiry=0, will=_will(topic, b"no-session", 2))
    w.kill()
    # Sent at the close (plus slack), not after the 2 s delay.
    m = watch.next_message(timeout=1.0)
    assert m.payload == b"no-session"

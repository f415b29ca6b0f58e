"""SUBSCRIBE / UNSUBSCRIBE: wildcards, invalid filters, $-topics, overlapping subscriptions."""

import time
import uuid

import pytest

from conftest import (
    DISCONNECT,
    MOSQUITTO,
    SUBACK,
    V311,
    V5,
    broker_still_serves,
    encode_props,
    mqtt_str,
    struct,
    unique_topic,
)


def test_wildcards(paho_factory, version):
    """`+` matches exactly one level (an empty one too), `#` any number of levels including
    the parent level itself (3.1.1 / 5.0 4.7.1)."""
    base = unique_topic("wild")
    plus = paho_factory(version)
    plus.subscribe(f"{base}/+/c", 1)
    hash_ = paho_factory(version)
    hash_.subscribe(f"{base}/#", 1)
    pub = paho_factory(version)
    topics = {
        f"{base}/x/c": (True, True),
        f"{base}//c": (True, True),  # an empty level is a level
        f"{base}/x/y/c": (False, True),
        f"{base}/c": (False, True),
        base: (False, True),  # "sport/#" matches "sport"
        f"{base}x/x/c": (False, False),
    }
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    want_plus = sorted(t for t, (p, _) in topics.items() if p)
    want_hash = sorted(t for t, (_, h) in topics.items() if h)
    assert sorted(m.topic for m in plus.take_messages(len(want_plus))) == want_plus
    assert sorted(m.topic for m in hash_.take_messages(len(want_hash))) == want_hash
    plus.assert_no_message()
    hash_.assert_no_message(0)


def test_subscribe_several_filters_in_one_packet(raw_factory, version):
    """One SUBACK with one code per filter, in order (MQTT-3.8.4-4/-5 / 5.0 MQTT-3.8.4-6)."""
    r = raw_factory(version)
    r.connect()
    base = unique_topic("multi")
    ack = r.subscribe([(f"{base}/0", 0), (f"{base}/1", 1), (f"{base}/2", 2)])
    assert ack.codes == [0, 1, 2], ack


def test_resubscribe_replaces(paho_factory, topic, version):
    """Subscribing again to the same filter replaces the subscription (MQTT-3.8.4-3): one copy,
    with the new QoS."""
    c = paho_factory(version)
    c.subscribe(topic, 0)
    c.subscribe(topic, 2)
    pub = paho_factory(version)
    pub.publish(topic, b"once", qos=2)
    m = c.next_message()
    assert (m.payload, m.qos) == (b"once", 2), m
    c.assert_no_message()


def test_unsubscribe(paho_factory, topic, version):
    c = paho_factory(version)
    c.subscribe(topic, 1)
    other = unique_topic("unsub-marker")
    c.subscribe(other, 1)
    pub = paho_factory(version)
    pub.publish(topic, b"before", qos=1)
    assert c.next_message().payload == b"before"
    codes = c.unsubscribe(topic)
    # 3.1.1 UNSUBACK has no payload; 5.0 has one reason code per filter, 0x00 Success.
    assert codes == ([] if version == V311 else [0x00]), codes
    pub.publish(topic, b"after", qos=1)
    pub.publish(other, b"marker", qos=1)
    assert c.next_message().payload == b"marker"
    c.assert_no_message()
    # Unsubscribing from a filter that has no subscription still gets an UNSUBACK
    # (MQTT-3.10.4-5); 5.0: 0x11 No subscription existed, or 0x00.
    codes = c.unsubscribe(unique_topic("never-subscribed"))
    assert codes in (([],) if version == V311 else ([0x00], [0x11])), codes
    if MOSQUITTO and version == V5:
        assert codes == [0x11]


INVALID_FILTERS = ["a/#/b", "a+/b", "#a", "a/b#"]


@pytest.mark.parametrize("filt", INVALID_FILTERS)
def test_invalid_filter(raw_factory, version, filt):
    """A filter with a misplaced wildcard (4.7.1: `#` only alone and last, `+` a whole level).
    The spec allows two answers: a SUBACK failure code (3.1.1: 0x80; 5.0: 0x8F Topic Filter
    invalid, or another code >= 0x80), after which the connection stays usable, or treating the
    packet as a protocol violation and closing the connection (3.1.1 4.8; 5.0 4.13, optionally
    after DISCONNECT 0x81 / 0x82 / 0x8F). Mosquitto 2.0.11 closes the connection, after
    DISCONNECT 0x81 (Malformed Packet) for a 5.0 client."""
    r = raw_factory(version)
    r.connect()
    pid = r.pid()
    body = struct.pack("!H", pid) + (encode_props(None) if version == V5 else b"") + mqtt_str(filt) + b"\x01"
    r.send_packet(8, 2, body)  # SUBSCRIBE
    got = []
    while not got or got[-1].type != SUBACK:
        try:
            p = r.read_packet()
        except TimeoutError:
            raise AssertionError(f"neither a SUBACK nor a close: {got}") from None
        if p is None:
            break
        got.append(p)
    if got and got[0].type == SUBACK:
        assert not MOSQUITTO, "Mosquitto 2.0.11 now answers an invalid filter with SUBACK: update"
        assert got[0].pid == pid, got
        if version == V311:
            assert got[0].codes == [0x80], got
        else:
            assert len(got[0].codes) == 1 and got[0].codes[0] >= 0x80, got
        assert r.is_open_and_serving()
    else:
        assert r.eof, f"neither a SUBACK nor a close: {got}"
        if version == V5:
            assert [p.type for p in got] in ([], [DISCONNECT]), got
            if got:
                assert got[0].code in (0x81, 0x82, 0x8F), got
            if MOSQUITTO:
                assert [(p.type, p.code) for p in got] == [(DISCONNECT, 0x81)], got
        else:
            assert got == [], got  # 3.1.1 servers send no DISCONNECT
    broker_still_serves(version)


def test_dollar_topics_not_matched_by_leading_wildcards(paho_factory, version):
    """Topics starting with `$` are not matched by filters starting with `#` or `+` (4.7.2,
    MQTT-4.7.2-1); a filter that starts with the same `$` level matches them."""
    h = uuid.uuid4().hex[:10]
    dollar = f"$it{h}/{h}"  # would match "+/<h>" and "#" but for the $ rule
    wild = paho_factory(version)
    # 5.0: Retain Handling 2, so "#" does not fetch every retained message on the broker.
    if version == V5:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        wild.subscribe("#", options=SubscribeOptions(qos=1, retainHandling=2))
    else:
        wild.subscribe("#", 1)
    wild.subscribe(f"+/{h}", 1)
    exact = paho_factory(version)
    exact.subscribe(f"$it{h}/#", 1)
    pub = paho_factory(version)
    pub.publish(dollar, b"dollar", qos=1)
    m = exact.next_message()
    assert (m.topic, m.payload) == (dollar, b"dollar")
    plain = f"x{h}/{h}"
    pub.publish(plain, b"plain", qos=1)
    # The plain topic matches both of wild's filters: one or two copies (3.3.5 / 5.0 3.3.4).
    got = wild.take_messages(1)
    time.sleep(0.3)
    with wild.cond:
        got += list(wild.messages)
        wild.messages.clear()
    mine = [m for m in got if h in m.topic]
    assert mine and all(m.topic == plain for m in mine), mine
    assert len(mine) <= 2, mine
    exact.assert_no_message(0)


def test_overlapping_subscriptions(paho_factory, version):
    """`a/+` at QoS 0 and `a/#` at QoS 1 on one client: the message is delivered respecting the
    maximum QoS of the matching subscriptions (3.1.1 MQTT-3.3.5-1; 5.0 3.3.4), as one copy or one
    copy per subscription (the spec allows both), so at least one copy has QoS 1.
    (Mosquitto 2.0.11 needs allow_duplicate_messages true for this with 3.1.1 clients: see
    mosquitto.sh.)"""
    base = unique_topic("overlap")
    c = paho_factory(version)
    c.subscribe(f"{base}/+", 0)
    c.subscribe(f"{base}/#", 1)
    pub = paho_factory(version)
    pub.publish(f"{base}/x", b"both", qos=1)
    first = c.next_message()
    time.sleep(0.3)  # a second copy, if any, comes right behind the first
    with c.cond:
        copies = [first] + list(c.messages)
        c.messages.clear()
    assert 1 <= len(copies) <= 2, copies
    assert all(m.payload == b"both" for m in copies)
    assert any(m.qos == 1 for m in copies), f"no copy with QoS 1: {copies}"
    assert all(m.qos in (0, 1) for m in copies), copies

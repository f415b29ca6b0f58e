"""Retained messages: set, replace, clear, delivery on subscribe with the retain flag."""

import pytest

from conftest import unique_topic


def test_retained_lifecycle(paho_factory, topic, version):
    pub = paho_factory(version)
    live = paho_factory(version)
    live.subscribe(topic, 1)

    # Set. A subscriber that was already there gets it as a normal message: RETAIN 0
    # (3.1.1 MQTT-3.3.1-9; 5.0 3.3.1.3 with Retain As Published 0, the default).
    pub.publish(topic, b"one", qos=1, retain=True)
    m = live.next_message()
    assert (m.payload, m.retain) == (b"one", False), m

    # A new subscription gets the retained message, with RETAIN 1 (3.1.1 MQTT-3.3.1-8, 5.0
    # MQTT-3.3.1-9 / 3.3.1.3).
    s1 = paho_factory(version)
    s1.subscribe(topic, 1)
    m = s1.next_message()
    assert (m.payload, m.retain, m.qos) == (b"one", True, 1), m

    # Replace: only the latest retained message per topic is kept (MQTT-3.3.1-5).
    pub.publish(topic, b"two", qos=1, retain=True)
    assert live.next_message().payload == b"two"
    s2 = paho_factory(version)
    s2.subscribe(topic, 1)
    marker = b"marker-after-replace"
    pub.publish(topic, marker, qos=1)
    before, _ = s2.drain_until(marker)
    assert [(b.payload, b.retain) for b in before] == [(b"two", True)], before
    assert live.next_message().payload == marker

    # Clear with an empty retained payload: existing subscribers still get the empty message
    # ("processed as normal by the Server and sent to Clients with a subscription matching the
    # topic name", 3.1.1 3.3.1.3 / 5.0 3.3.1.3) ...
    pub.publish(topic, b"", qos=1, retain=True)
    m = live.next_message()
    assert (m.payload, m.retain) == (b"", False), m
    # ... and a new subscription gets nothing before a later live message (MQTT-3.3.1-10/-11,
    # 5.0 MQTT-3.3.1-6/-7: the empty retained message is not stored).
    s3 = paho_factory(version)
    s3.subscribe(topic, 1)
    marker = b"marker-after-clear"
    pub.publish(topic, marker, qos=1)
    before, m = s3.drain_until(marker)
    assert before == [], before
    assert m.retain is False


@pytest.mark.parametrize("stored_qos,sub_qos", [(2, 1), (0, 2), (1, 2)], ids=["stored2-sub1", "stored0-sub2", "stored1-sub2"])
def test_retained_qos_is_min(paho_factory, topic, version, stored_qos, sub_qos):
    """A retained message is delivered with min(its QoS, the subscription's QoS)."""
    pub = paho_factory(version)
    pub.publish(topic, b"kept", qos=stored_qos, retain=True)
    sub = paho_factory(version)
    sub.subscribe(topic, sub_qos)
    m = sub.next_message()
    assert (m.payload, m.retain, m.qos) == (b"kept", True, min(stored_qos, sub_qos)), m
    pub.publish(topic, b"", qos=1, retain=True)  # clear


def test_retained_matched_by_wildcards(paho_factory, version):
    """Retained messages of every topic a new wildcard filter matches are sent (3.3.1.3)."""
    base = unique_topic("retwild")
    topics = [f"{base}/a", f"{base}/b/c", f"{base}/b/d"]
    pub = paho_factory(version)
    for i, t in enumerate(topics):
        pub.publish(t, f"r{i}".encode(), qos=1, retain=True)
    pub.publish(f"{base}/b/none", b"not-retained", qos=1)
    plus = paho_factory(version)
    plus.subscribe(f"{base}/b/+", 1)
    hash_ = paho_factory(version)
    hash_.subscribe(f"{base}/#", 1)
    got_plus = sorted((m.topic, m.payload, m.retain) for m in plus.take_messages(2))
    got_hash = sorted((m.topic, m.payload, m.retain) for m in hash_.take_messages(3))
    assert got_plus == [(topics[1], b"r1", True), (topics[2], b"r2", True)]
    assert got_hash == [(topics[0], b"r0", True), (topics[1], b"r1", True), (topics[2], b"r2", True)]
    plus.assert_no_message(0.2)
    hash_.assert_no_message(0.0)
    for t in topics:
        pub.publish(t, b"", qos=1, retain=True)

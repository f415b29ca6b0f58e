"""QoS 0/1/2 round trips and the QoS 1/2 flows on the wire."""

import pytest

from conftest import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    V5,
    unique_topic,
)

PAYLOAD = bytes(range(256)) + b"\x00end"


@pytest.mark.parametrize("sub_qos", [0, 1, 2], ids=lambda q: f"sub{q}")
@pytest.mark.parametrize("pub_qos", [0, 1, 2], ids=lambda q: f"pub{q}")
def test_round_trip(paho_factory, topic, version, pub_qos, sub_qos):
    """The subscriber gets the message with QoS min(publish QoS, granted QoS) (3.1.1 3.8.4,
    5.0 3.8.4); the publisher's flow completes (PUBACK for QoS 1, PUBCOMP for QoS 2)."""
    sub = paho_factory(version)
    # A server MAY grant a lower QoS than asked (3.9.3), but both brokers grant what is asked,
    # and the suite expects full QoS 2 support.
    sub.subscribe(topic, sub_qos)
    pub = paho_factory(version)
    pub.publish(topic, PAYLOAD, qos=pub_qos)  # waits for PUBACK / PUBCOMP
    m = sub.next_message()
    assert m.topic == topic
    assert m.payload == PAYLOAD
    assert m.qos == min(pub_qos, sub_qos), m
    assert m.retain is False and m.dup is False, m


def test_qos1_flow_on_the_wire(raw_factory, paho_factory, version):
    """QoS 1 from a raw publisher: PUBACK with the same packet id (MQTT-4.3.2-2 / 4.3.2);
    a raw subscriber gets a PUBLISH with a non-zero packet id and DUP 0."""
    topic = unique_topic("q1wire")
    sub = raw_factory(version)
    sub.connect()
    sub.subscribe([(topic, 1)], expect=[1])
    pub = raw_factory(version)
    pub.connect()
    pid = pub.publish(topic, b"q1", qos=1, pid=0x1234)
    ack = pub.read_packet()
    assert ack is not None and ack.type == PUBACK and ack.pid == 0x1234, ack
    if version == V5:
        assert ack.code in (0x00, 0x10), ack  # success, or "no matching subscribers"
    m = sub.read_packet()
    assert m.type == PUBLISH and m.qos == 1 and m.pid and not m.dup and m.payload == b"q1", m
    sub.ack(PUBACK, m.pid)
    # Nothing else: no redelivery of an acknowledged message on a live connection.
    assert sub.packets_within(0.3) == []
    assert pid == 0x1234 and sub.is_open_and_serving()


def test_qos2_exactly_once_on_the_wire(raw_factory, version):
    """A QoS 2 PUBLISH sent again with DUP=1 before PUBREL (a publisher's retransmission) is not
    delivered twice (3.1.1 4.3.3 / 5.0 4.3.3: the receiver MUST NOT cause duplicate messages to
    be delivered to onward recipients); the flow is PUBREC, PUBREL, PUBCOMP with the same id.
    The subscriber's side: PUBLISH -> PUBREC -> PUBREL -> PUBCOMP."""
    topic = unique_topic("q2wire")
    sub = raw_factory(version)
    sub.connect()
    sub.subscribe([(topic, 2)], expect=[2])
    pub = raw_factory(version)
    pub.connect()
    pub.publish(topic, b"once", qos=2, pid=77)
    rec = pub.read_packet()
    assert rec.type == PUBREC and rec.pid == 77, rec
    pub.publish(topic, b"once", qos=2, pid=77, dup=True)
    rec2 = pub.read_packet()
    assert rec2.type == PUBREC and rec2.pid == 77, rec2
    pub.ack(PUBREL, 77)
    comp = pub.read_packet()
    assert comp.type == PUBCOMP and comp.pid == 77 and comp.code == 0, comp

    m = sub.read_packet()
    assert m.type == PUBLISH and m.qos == 2 and m.payload == b"once" and not m.dup, m
    sub.ack(PUBREC, m.pid)
    rel = sub.read_packet()
    assert rel.type == PUBREL and rel.pid == m.pid and rel.flags == 2, rel
    sub.ack(PUBCOMP, m.pid)
    # Exactly once: no second copy of the retransmitted PUBLISH.
    extra = sub.packets_within(0.4)
    assert extra == [], extra


@pytest.mark.parametrize("qos", [1, 2], ids=lambda q: f"qos{q}")
def test_message_order_per_topic(paho_factory, topic, version, qos):
    """One publisher's messages on one topic arrive in order: "It MUST send PUBLISH packets to
    consumers (for the same Topic and QoS) in the order that they were received from any given
    Client" (3.1.1 4.6 / 5.0 4.6)."""
    sub = paho_factory(version)
    sub.subscribe(topic, 2)
    pub = paho_factory(version)
    n = 50
    for i in range(n):
        pub.publish(topic, f"{i}".encode(), qos=qos, wait=False)
    got = [m.payload for m in sub.take_messages(n)]
    assert got == [f"{i}".encode() for i in range(n)]

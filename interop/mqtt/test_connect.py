"""CONNECT / CONNACK: clean sessions, client identifiers, session takeover."""

import pytest

from conftest import (
    CONNACK,
    MOSQUITTO,
    RDMQ,
    V311,
    V5,
    broker_still_serves,
    uid,
)


def test_connect_clean(paho_factory, version):
    c = paho_factory(version)
    session_present, code, props = c.connack
    assert code == 0
    # 3.1.1 MQTT-3.2.2-1 / 5.0 MQTT-3.2.2-2: a clean session never has a session present.
    assert session_present is False
    if version == V5:
        # Absent CONNACK properties mean the defaults (5.0 3.2.2.3); the suite relies on QoS 2,
        # retained messages, wildcards and shared subscriptions, so none may be switched off.
        assert "MaximumQoS" not in props, props
        assert props.get("RetainAvailable", 1) == 1, props
        assert props.get("WildcardSubscriptionAvailable", 1) == 1, props
        assert props.get("SharedSubscriptionAvailable", 1) == 1, props
        assert props.get("ReceiveMaximum", 65535) >= 1, props
        # We sent a client id, so none may be assigned.
        assert "AssignedClientIdentifier" not in props, props
    c.disconnect()
    assert not c.is_connected()


def test_connack_on_the_wire(raw_factory, version):
    r = raw_factory(version)
    p = r.connect(client_id=uid("wire"))
    if version == V311:
        # 3.1.1 3.2: exactly 0x20 0x02, acknowledge flags 0 (reserved bits 0, session present 0
        # for a clean session), return code 0.
        assert (p.type, p.flags, p.body) == (CONNACK, 0, b"\x00\x00"), p
    else:
        assert (p.type, p.flags, p.body[:2]) == (CONNACK, 0, b"\x00\x00"), p
    assert r.is_open_and_serving()


def test_zero_length_client_id(paho_factory, topic, version):
    """A zero-byte client id with a clean session: the server assigns a unique one (3.1.1
    3.1.3.1 MQTT-3.1.3-6 allows a server to accept it; 5.0 3.1.3.1 MQTT-3.1.3-6 and 3.2.2.3.7:
    it MUST then return the Assigned Client Identifier). Two such clients must not collide."""
    a = paho_factory(version, client_id="")
    b = paho_factory(version, client_id="")
    for c in (a, b):
        assert c.connack[1] == 0 and c.session_present is False
    if version == V5:
        ida = a.connack_props.get("AssignedClientIdentifier")
        idb = b.connack_props.get("AssignedClientIdentifier")
        assert ida and idb and ida != idb, (a.connack_props, b.connack_props)
    # Had the server given both the same id, b would have taken a's session over.
    for c in (a, b):
        c.subscribe(topic, 1)
    a.publish(topic, b"to-both", qos=1)
    for c in (a, b):
        assert c.next_message().payload == b"to-both"
    assert a.is_connected() and b.is_connected()


def test_zero_length_client_id_persistent_refused_v311(raw_factory):
    """3.1.1 MQTT-3.1.3-8: a zero-byte ClientId with CleanSession=0 gets CONNACK 0x02
    (Identifier rejected), then the server closes the connection."""
    r = raw_factory(V311)
    p = r.connect(client_id="", clean=False, expect_code=None)
    assert p.code == 0x02, p
    assert p.session_present is False  # MQTT-3.2.2-4: 0 with a non-zero return code
    r.wait_closed()
    broker_still_serves(V311)


def test_client_id_takeover(paho_factory, topic, version):
    """A second connection with the same client id closes the first (3.1.1 MQTT-3.1.4-2,
    5.0 MQTT-3.1.4-3); the second is served."""
    cid = uid("take")
    first = paho_factory(version, client_id=cid)
    second = paho_factory(version, client_id=cid)
    code, props, from_broker = first.wait_disconnected()
    if version == V5:
        # 5.0 3.1.4: the server "sends a DISCONNECT packet to the existing Client with Reason
        # Code of 0x8E (Session taken over)" and MUST close its connection; only the close is
        # a MUST (4.13: a server MAY close without DISCONNECT). Mosquitto 2.0.11 closes without
        # a DISCONNECT; rdmq sends 0x8E.
        if from_broker or RDMQ:
            assert from_broker and code == 0x8E, (code, props, from_broker)
        if MOSQUITTO:
            assert not from_broker, "Mosquitto 2.0.11 now sends DISCONNECT on takeover: update the test"
    else:
        assert not from_broker  # 3.1.1 has no server DISCONNECT
    assert not first.is_connected()
    assert second.is_connected()
    second.subscribe(topic, 1)
    second.publish(topic, b"still-served", qos=1)
    assert second.next_message().payload == b"still-served"


@pytest.mark.parametrize("level", [6, 255])
def test_unsupported_protocol_level(raw_factory, level):
    """3.1.1 MQTT-3.1.2-2: an unsupported protocol level gets CONNACK 0x01 and a close. A 5.0
    server MAY send 0x84 instead (5.0 3.1.2.2); either is accepted."""
    r = raw_factory(V311)
    r.send(r.connect_bytes(uid("lvl"), level=level))
    _, got = r.wait_closed()
    assert len(got) == 1 and got[0].type == CONNACK and got[0].code in (0x01, 0x84), got
    if MOSQUITTO:
        assert [(p.type, p.code) for p in got] == [(CONNACK, 0x01)], got
    broker_still_serves(V311)

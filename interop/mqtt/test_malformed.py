"""Malformed packets and protocol violations: the broker closes the connection (5.0: after a
DISCONNECT with a reason code >= 0x80, if it sends one; a 3.1.1 server sends no DISCONNECT) and
keeps serving everyone else."""

import pytest

from conftest import (
    CONNACK,
    DISCONNECT,
    MOSQUITTO,
    V311,
    V5,
    broker_still_serves,
    encode_props,
    mqtt_str,
    struct,
    uid,
)


def _props(r):
    return encode_props(None) if r.v5 else b""


def _packet(ptype, flags, body):
    from conftest import varint

    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


# name -> (connect first?, bytes to send(r), 5.0 reason codes allowed in a DISCONNECT,
#          what Mosquitto 2.0.11 sends before closing: {version: [(type, code)]}, so a change in
#          the reference is noticed)
CASES = {
    # Remaining length of 5 bytes (at most 4 are allowed: 3.1.1 2.2.3, 5.0 1.5.5).
    "remaining-length-5-bytes": (True, lambda r: bytes([0xC0, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
                                 (0x81,), {V311: [], V5: []}),
    # SUBSCRIBE with fixed-header flags 0000 instead of 0010 (MQTT-3.8.1-1).
    "subscribe-reserved-flags": (True, lambda r: _packet(8, 0, struct.pack("!H", 1) + _props(r) + mqtt_str("a") + b"\x01"),
                                 (0x81,), {V311: [], V5: [(DISCONNECT, 0x81)]}),
    # PUBREL with flags 0000 instead of 0010 (MQTT-3.6.1-1).
    "pubrel-reserved-flags": (True, lambda r: _packet(6, 0, struct.pack("!H", 1)),
                              (0x81,), {V311: [], V5: []}),
    # PUBLISH with both QoS bits set (MQTT-3.3.1-4).
    "publish-qos3": (True, lambda r: _packet(3, 0x06, mqtt_str("a/b") + struct.pack("!H", 1) + _props(r) + b"x"),
                     (0x81,), {V311: [], V5: [(DISCONNECT, 0x81)]}),
    # PUBLISH whose topic name has a wildcard (MQTT-3.3.2-2).
    "publish-wildcard-topic": (True, lambda r: _packet(3, 0, mqtt_str("a/+") + _props(r) + b"x"),
                               (0x81, 0x82, 0x90), {V311: [], V5: [(DISCONNECT, 0x82)]}),
    # PUBLISH whose topic name is not UTF-8 (MQTT-1.5.3-1).
    "publish-invalid-utf8": (True, lambda r: _packet(3, 0, mqtt_str(b"a/\xff\xfe") + _props(r) + b"x"),
                             (0x81, 0x82, 0x90), {V311: [], V5: [(DISCONNECT, 0x81)]}),
    # SUBSCRIBE without any topic filter (MQTT-3.8.3-3 / 5.0 MQTT-3.8.3-2).
    "subscribe-no-filters": (True, lambda r: _packet(8, 2, struct.pack("!H", 1) + _props(r)),
                             (0x81, 0x82), {V311: [], V5: [(DISCONNECT, 0x81)]}),
    # Any packet before CONNECT (MQTT-3.1.0-1).
    "pingreq-before-connect": (False, lambda r: _packet(12, 0, b""), (), {V311: [], V5: []}),
    # A second CONNECT (MQTT-3.1.0-2).
    "second-connect": (True, lambda r: r.connect_bytes(uid("again")), (0x82,), {V311: [], V5: []}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_packet_closes_connection(raw_factory, version, case):
    connect_first, make, v5_codes, mosquitto = CASES[case]
    r = raw_factory(version)
    if connect_first:
        r.connect()
    r.send(make(r))
    _, got = r.wait_closed()
    if version == V5:
        assert [p.type for p in got] in ([], [DISCONNECT]), got
        if got:
            assert got[0].code in v5_codes, got
    else:
        assert got == [], got  # 3.1.1 has no server-to-client DISCONNECT
    if MOSQUITTO and mosquitto is not None:
        assert [(p.type, p.code) for p in got] == mosquitto[version], got
    broker_still_serves(version)


@pytest.mark.parametrize("name", ["MQTX", "MQIsdp"])
def test_connect_wrong_protocol_name(raw_factory, version, name):
    """CONNECT with protocol name "MQTX" (or MQTT 3.1's "MQIsdp" with level 4/5): the server MAY
    close the connection (MQTT-3.1.2-1); if it answers, it MUST NOT accept (a CONNACK, if any,
    carries a refusal: 0x01 in 3.1.1; 0x84 Unsupported Protocol Version or 0x01 in 5.0)."""
    r = raw_factory(version)
    r.send(r.connect_bytes(uid("name"), proto_name=name))
    _, got = r.wait_closed()
    assert len(got) <= 1, got
    if got:
        assert got[0].type == CONNACK and got[0].code in (0x01, 0x84), got
    if MOSQUITTO:
        # No answer to "MQTX"; "MQIsdp" (3.1's name) with level 4 or 5 gets 0x01.
        assert [(p.type, p.code) for p in got] == ([] if name == "MQTX" else [(CONNACK, 0x01)]), got
    broker_still_serves(version)


def test_connect_reserved_flag(raw_factory, version):
    """The CONNECT flags' reserved bit 0 must be 0 (MQTT-3.1.2-3): malformed, closed (a 5.0
    server may send CONNACK 0x81 first)."""
    r = raw_factory(version)
    data = bytearray(r.connect_bytes(uid("resv")))
    flags_at = 2 + 6 + 1  # fixed header (2 bytes: short packet), "MQTT" string (6), level (1)
    assert data[flags_at] == 0x02
    data[flags_at] |= 0x01
    r.send(bytes(data))
    _, got = r.wait_closed()
    assert len(got) <= 1, got
    if got:
        assert got[0].type == CONNACK, got
        assert got[0].code >= 0x80 if version == V5 else got[0].code != 0, got
    if MOSQUITTO:
        assert got == [], got
    broker_still_serves(version)

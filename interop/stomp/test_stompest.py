"""A second, independent client: stompest 2.3.0 (synchronous API).

A subset of the suite, to catch anything that only works because of how stomp.py frames things:
connect, queue send/receive with ack, topic, transaction, receipt, binary body. stompest does
not add content-length by itself; binary bodies need it passed explicitly (as its docs say).
"""

import time

import pytest
from stompest.config import StompConfig
from stompest.protocol import StompSpec
from stompest.sync import Stomp

from conftest import HOST, LOGIN, PASSCODE, PORT, RABBITMQ, TIMEOUT, VHOST, uid

ACK = StompSpec.ACK_HEADER
ID = StompSpec.ID_HEADER


@pytest.fixture
def stompest_factory():
    made = []

    def make(version="1.2"):
        cfg = StompConfig(f"tcp://{HOST}:{PORT}", login=LOGIN, passcode=PASSCODE, version=version)
        c = Stomp(cfg)
        c.connect(host=VHOST, versions=[version], connectTimeout=TIMEOUT, connectedTimeout=TIMEOUT)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.disconnect()
        except Exception:
            pass
        try:
            c.close()
        except Exception:
            pass


def frame(c, timeout=TIMEOUT):
    assert c.canRead(timeout), f"no frame within {timeout}s"
    return c.receiveFrame()


def wait_receipt(c, rid, timeout=TIMEOUT):
    """Read until RECEIPT rid; returns the frames that came before it."""
    before = []
    deadline = time.monotonic() + timeout
    while True:
        f = frame(c, max(0.01, deadline - time.monotonic()))
        assert f.command != StompSpec.ERROR, f"ERROR: {f.headers} {f.body!r}"
        if f.command == StompSpec.RECEIPT and f.headers.get(StompSpec.RECEIPT_ID_HEADER) == rid:
            return before
        before.append(f)


def subscribe(c, dest, ack="auto", sub_id=None):
    rid = uid("sub")
    headers = {ID: sub_id or uid("s"), ACK: ack}
    token = c.subscribe(dest, headers, receipt=rid)
    wait_receipt(c, rid)
    return token


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_connect_versions(stompest_factory, version):
    c = stompest_factory(version)
    assert c.session.version == version
    assert c.session.id  # the CONNECTED frame's session header


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_queue_send_receive_ack(stompest_factory, queue_dest, version):
    prod = stompest_factory(version)
    rid = uid("send")
    prod.send(queue_dest, b"one", headers={"x-from": "stompest"})
    prod.send(queue_dest, b"two", receipt=rid)
    wait_receipt(prod, rid)

    a = stompest_factory(version)
    subscribe(a, queue_dest, ack=StompSpec.ACK_CLIENT_INDIVIDUAL)
    m1, m2 = frame(a), frame(a)
    assert (m1.command, m1.body, m2.body) == (StompSpec.MESSAGE, b"one", b"two")
    assert m1.headers["x-from"] == "stompest"
    rid = uid("ack")
    a.ack(m1, receipt=rid)  # stompest picks `id`/`message-id`+`subscription` by version
    wait_receipt(a, rid)
    a.disconnect()
    a.close()

    b = stompest_factory(version)
    subscribe(b, queue_dest, ack=StompSpec.ACK_CLIENT_INDIVIDUAL)
    again = frame(b)
    assert again.body == b"two"  # m1 was acked, m2 was not
    assert again.headers.get("redelivered") == "true"
    b.ack(again)
    assert not b.canRead(0.4)


def test_topic_fan_out(stompest_factory, topic_dest):
    subs = [stompest_factory() for _ in range(2)]
    for s in subs:
        subscribe(s, topic_dest)
    prod = stompest_factory()
    prod.send(topic_dest, b"to-all")
    for s in subs:
        f = frame(s)
        assert f.body == b"to-all"
        assert f.headers["destination"] == topic_dest


def test_transaction_commit_and_abort(stompest_factory, queue_dest):
    cons = stompest_factory()
    subscribe(cons, queue_dest)
    prod = stompest_factory()
    rid = uid("tx")
    with prod.transaction(receipt=rid) as tx:
        prod.send(queue_dest, b"committed", headers={StompSpec.TRANSACTION_HEADER: tx})
    wait_receipt(prod, rid + "-commit")
    assert frame(cons).body == b"committed"

    rid = uid("tx")
    with pytest.raises(RuntimeError):
        with prod.transaction(receipt=rid) as tx:
            prod.send(queue_dest, b"aborted", headers={StompSpec.TRANSACTION_HEADER: tx})
            raise RuntimeError("abort it")
    wait_receipt(prod, rid + "-abort")
    prod.send(queue_dest, b"marker")
    assert frame(cons).body == b"marker"  # nothing from the aborted transaction before it


def test_receipts(stompest_factory, queue_dest):
    c = stompest_factory()
    ids = [uid("r") for _ in range(3)]
    token = c.subscribe(queue_dest, {ID: "s1", ACK: StompSpec.ACK_AUTO}, receipt=ids[0])
    # To another queue: a message delivered on s1 while it is being unsubscribed makes RabbitMQ
    # send ERROR "Subscription not found" (a race in its adapter), which is not what this tests.
    c.send(queue_dest + "-other", b"x", receipt=ids[1])
    c.unsubscribe(token, receipt=ids[2])
    got = []
    while len(got) < 3:
        f = frame(c)
        assert f.command == StompSpec.RECEIPT, f
        got.append(f.headers[StompSpec.RECEIPT_ID_HEADER])
    if RABBITMQ:
        assert sorted(got) == sorted(ids)  # SEND's RECEIPT may overtake (test_receipts.py)
    else:
        assert got == ids
    rid = uid("bye")
    c.disconnect(receipt=rid)
    f = frame(c)
    assert f.command == StompSpec.RECEIPT and f.headers[StompSpec.RECEIPT_ID_HEADER] == rid
    c.close()


def test_binary_body(stompest_factory, queue_dest):
    body = bytes(range(256)) * 4 + b"\x00\x00end\x00"
    cons = stompest_factory()
    subscribe(cons, queue_dest)
    prod = stompest_factory()
    prod.send(queue_dest, body, headers={StompSpec.CONTENT_LENGTH_HEADER: str(len(body))})
    f = frame(cons)
    assert f.body == body
    assert int(f.headers["content-length"]) == len(body)

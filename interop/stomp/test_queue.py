"""Queues (/queue/<name>): point-to-point delivery, competing subscribers, MESSAGE headers."""

import time

import pytest

from conftest import RABBITMQ, bodies, uid


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_send_then_receive(client_factory, queue_dest, version):
    prod = client_factory(version=version)
    cons = client_factory(version=version)
    # Queue semantics: a message sent before anyone subscribes waits in the queue.
    for i in range(3):
        prod.send(queue_dest, f"m{i}".encode(), receipt=(i == 2))
    sub = cons.subscribe(queue_dest)
    msgs = cons.take_messages(3)
    assert bodies(msgs) == [b"m0", b"m1", b"m2"]  # one producer's order is kept
    for m in msgs:
        assert m.headers["destination"] == queue_dest
        assert m.headers["message-id"]
        if version != "1.0":
            # 1.1+: MESSAGE MUST carry the subscription id it is delivered on.
            assert m.headers["subscription"] == sub
    assert len({m.headers["message-id"] for m in msgs}) == 3
    cons.assert_no_message()


def test_subscribe_then_send(client_factory, queue_dest):
    cons = client_factory()
    cons.subscribe(queue_dest)
    prod = client_factory()
    prod.send(queue_dest, b"hello")
    assert cons.next_message().body == b"hello"


def test_competing_subscribers_share_the_queue(client_factory, queue_dest):
    a = client_factory()
    b = client_factory()
    a.subscribe(queue_dest)
    b.subscribe(queue_dest)
    prod = client_factory()
    n = 40
    for i in range(n):
        prod.send(queue_dest, f"{i}".encode(), receipt=(i == n - 1))
    got_a, got_b = [], []
    # Collect until all n arrived across both subscribers.
    deadline = time.monotonic() + 5
    while len(got_a) + len(got_b) < n and time.monotonic() < deadline:
        for c, got in ((a, got_a), (b, got_b)):
            with c.listener.cond:
                while c.listener.messages:
                    got.append(c.listener.messages.popleft().body)
        time.sleep(0.02)
    a.assert_no_message(0.2)
    b.assert_no_message(0)
    everything = got_a + got_b
    assert sorted(everything, key=int) == [f"{i}".encode() for i in range(n)], "lost or duplicated"
    # The spec does not say how a queue spreads messages over subscribers; both RabbitMQ
    # (round-robin) and rdmq give each subscriber some, and a gateway that starved one would be
    # a bug for us.
    assert got_a and got_b, (len(got_a), len(got_b))


def test_unsubscribe_stops_delivery(client_factory, queue_dest):
    cons = client_factory()
    sub = cons.subscribe(queue_dest)
    prod = client_factory()
    prod.send(queue_dest, b"before")
    assert cons.next_message().body == b"before"
    cons.unsubscribe(sub)
    prod.send(queue_dest, b"after", receipt=True)
    cons.assert_no_message()
    # It stayed in the queue for the next subscriber.
    other = client_factory()
    other.subscribe(queue_dest)
    assert other.next_message().body == b"after"


def test_user_headers_pass_through(client_factory, queue_dest):
    cons = client_factory()
    cons.subscribe(queue_dest)
    prod = client_factory()
    prod.send(
        queue_dest,
        b"{}",
        headers={"x-trace-id": "abc-123", "priority-class": "gold", "content-type": "application/json",
                 "reply-to": "/queue/" + uid("replies"), "correlation-id": "c-42"},
    )
    m = cons.next_message()
    assert m.headers["x-trace-id"] == "abc-123"
    assert m.headers["priority-class"] == "gold"
    assert m.headers["content-type"] == "application/json"
    assert m.headers["correlation-id"] == "c-42"
    assert m.headers["reply-to"].startswith("/queue/replies-")
    assert m.body == b"{}"


def test_send_receipt_header_not_copied_to_message(client_factory, queue_dest):
    cons = client_factory()
    cons.subscribe(queue_dest)
    prod = client_factory()
    rid = uid("r")
    prod.conn.send(queue_dest, b"x", headers={"receipt": rid})
    prod.listener.wait_receipt(rid)
    m = cons.next_message()
    if RABBITMQ:
        # RabbitMQ copies every SEND header it does not consume, `receipt` included, into the
        # MESSAGE. The spec only says MESSAGE SHOULD carry the user-defined headers; `receipt`
        # is a frame-level header for the sender, and rdmq does not forward it.
        assert m.headers.get("receipt") == rid
    else:
        assert "receipt" not in m.headers, m.headers

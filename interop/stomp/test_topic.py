"""Topics (/topic/<name>): fan-out, wildcards, durable subscriptions."""

import uuid

from conftest import RABBITMQ, bodies, uid


def test_every_subscriber_gets_every_message(client_factory, topic_dest):
    subs = [client_factory() for _ in range(3)]
    for s in subs:
        s.subscribe(topic_dest)
    prod = client_factory()
    for i in range(5):
        prod.send(topic_dest, f"t{i}".encode())
    for s in subs:
        msgs = s.take_messages(5)
        assert bodies(msgs) == [f"t{i}".encode() for i in range(5)]
        assert all(m.headers["destination"] == topic_dest for m in msgs)
    for s in subs:
        s.assert_no_message(0.1)


def test_topic_without_subscribers_drops(client_factory, topic_dest):
    prod = client_factory()
    prod.send(topic_dest, b"nobody-listens", receipt=True)
    late = client_factory()
    late.subscribe(topic_dest)
    prod.send(topic_dest, b"now-listening")
    # A topic keeps nothing for subscribers that come later: the first delivery is the second.
    assert late.next_message().body == b"now-listening"
    late.assert_no_message()


def test_two_subscriptions_on_one_connection(client_factory, topic_dest):
    c = client_factory()
    s1 = c.subscribe(topic_dest)
    s2 = c.subscribe(topic_dest)
    prod = client_factory()
    prod.send(topic_dest, b"x")
    msgs = c.take_messages(2)
    assert sorted(m.headers["subscription"] for m in msgs) == sorted([s1, s2])
    c.assert_no_message()


def test_topic_unsubscribe(client_factory, topic_dest):
    c = client_factory()
    sid = c.subscribe(topic_dest)
    prod = client_factory()
    prod.send(topic_dest, b"one")
    assert c.next_message().body == b"one"
    c.unsubscribe(sid)
    prod.send(topic_dest, b"two", receipt=True)
    c.assert_no_message()


def test_wildcards(client_factory):
    # '.'-separated words; '*' = exactly one word, '#' = zero or more words (RabbitMQ's topic
    # exchange rules, which rdmq's topics follow too).
    base = "it.wc" + uuid.uuid4().hex[:10]
    star = client_factory()
    hash_ = client_factory()
    exact = client_factory()
    star.subscribe(f"/topic/{base}.*")
    hash_.subscribe(f"/topic/{base}.#")
    exact.subscribe(f"/topic/{base}.a")
    prod = client_factory()
    sent = [base, f"{base}.a", f"{base}.b", f"{base}.a.b", f"{base}x.a", "other." + base]
    for name in sent:
        prod.send(f"/topic/{name}", name.encode())
    prod.send("/topic/" + f"{base}.end", b"end", receipt=True)

    def received(c):
        got = []
        while True:
            m = c.next_message()
            if m.body == b"end":
                return got
            got.append(m.body.decode())

    assert received(star) == [f"{base}.a", f"{base}.b"]
    assert received(hash_) == [base, f"{base}.a", f"{base}.b", f"{base}.a.b"]
    exact_got = []
    prod.send(f"/topic/{base}.a", b"last")
    while True:
        m = exact.next_message()
        if m.body == b"last":
            break
        exact_got.append(m.body.decode())
    assert exact_got == [f"{base}.a"]
    # The MESSAGE's destination is the one it was sent to, not the subscription pattern.
    star2 = client_factory()
    star2.subscribe(f"/topic/{base}.*")
    prod.send(f"/topic/{base}.zz", b"d")
    assert star2.next_message().headers["destination"] == f"/topic/{base}.zz"


# Durable topic subscriptions. STOMP itself has none; the headers are RabbitMQ's convention,
# which rdmq accepts too: SUBSCRIBE with `id`, `durable:true` and `auto-delete:false` creates a
# subscription that outlives the connection and is found again by the same `id` (and
# destination); UNSUBSCRIBE with `durable:true` deletes it. RabbitMQ needs `auto-delete:false`
# as well: with `durable:true` alone its queue is auto-deleted when the subscriber goes away
# (test_durable_without_auto_delete_false below); rdmq ignores auto-delete. `persistent:true` is
# RabbitMQ's older alias of `durable:true`; rdmq accepts it too.
DURABLE = {"durable": "true", "auto-delete": "false"}


def _durable_roundtrip(client_factory, topic_dest, sub_headers, unsub_headers):
    sid = uid("dur")
    a = client_factory()
    a.subscribe(topic_dest, sid, ack="client-individual", headers=sub_headers)
    prod = client_factory()
    prod.send(topic_dest, b"while-connected", receipt=True)
    m = a.next_message()
    assert m.body == b"while-connected"
    a.ack(m)
    a.disconnect()

    prod.send(topic_dest, b"while-away-1")
    prod.send(topic_dest, b"while-away-2", receipt=True)

    b = client_factory()  # another connection, same subscription id
    b.subscribe(topic_dest, sid, ack="client-individual", headers=sub_headers)
    msgs = b.take_messages(2)
    assert bodies(msgs) == [b"while-away-1", b"while-away-2"]
    assert all(m.headers["subscription"] == sid for m in msgs)
    for m in msgs:
        b.ack(m)
    b.assert_no_message()

    # UNSUBSCRIBE with durable:true removes it: nothing published afterwards is kept for `sid`.
    b.unsubscribe(sid, headers=unsub_headers)
    prod.send(topic_dest, b"after-unsubscribe", receipt=True)
    c = client_factory()
    c.subscribe(topic_dest, sid, ack="client-individual", headers=sub_headers)
    prod.send(topic_dest, b"marker")
    assert c.next_message().body == b"marker"
    c.unsubscribe(sid, headers=unsub_headers)


def test_durable_subscription(client_factory, topic_dest):
    _durable_roundtrip(client_factory, topic_dest, DURABLE, {"durable": "true"})


def test_durable_subscription_persistent_alias(client_factory, topic_dest):
    _durable_roundtrip(
        client_factory, topic_dest, {"persistent": "true", "auto-delete": "false"}, {"persistent": "true"}
    )


def test_durable_without_auto_delete_false(client_factory, topic_dest):
    sid = uid("dur")
    a = client_factory()
    a.subscribe(topic_dest, sid, headers={"durable": "true"})
    a.disconnect()
    prod = client_factory()
    prod.send(topic_dest, b"while-away", receipt=True)
    b = client_factory()
    b.subscribe(topic_dest, sid, headers={"durable": "true"})
    prod.send(topic_dest, b"marker")
    first = b.next_message().body
    if RABBITMQ:
        # RabbitMQ: auto-delete defaults to true, so the subscription's queue went away with the
        # first connection and "while-away" was dropped.
        assert first == b"marker"
    else:
        # rdmq ignores auto-delete: durable:true alone makes a durable subscription
        # (docs/STOMP.md). Durable subscriptions are an extension; the spec has no say.
        assert first == b"while-away"
        assert b.next_message().body == b"marker"
    b.unsubscribe(sid, headers={"durable": "true"})


def test_plain_unsubscribe_keeps_durable_subscription(client_factory, topic_dest):
    sid = uid("dur")
    a = client_factory()
    a.subscribe(topic_dest, sid, headers=DURABLE)
    a.unsubscribe(sid)  # no durable:true: only this connection's subscription ends
    prod = client_factory()
    prod.send(topic_dest, b"kept", receipt=True)
    b = client_factory()
    b.subscribe(topic_dest, sid, headers=DURABLE)
    assert b.next_message().body == b"kept"
    b.unsubscribe(sid, headers={"durable": "true"})

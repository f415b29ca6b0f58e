"""Ack modes (auto, client, client-individual), redelivery, NACK."""

import pytest

from conftest import bodies


def _fill(client_factory, dest, n, prefix="m"):
    prod = client_factory()
    for i in range(1, n + 1):
        prod.send(dest, f"{prefix}{i}".encode(), receipt=(i == n))
    return prod


def _first_delivery(m):
    # `redelivered` is RabbitMQ's header (rdmq sends it too); a first delivery has it false or
    # leaves it out.
    return m.headers.get("redelivered", "false") == "false"


def test_auto_ack_is_not_redelivered(client_factory, queue_dest):
    _fill(client_factory, queue_dest, 3)
    a = client_factory()
    a.subscribe(queue_dest, ack="auto")
    assert bodies(a.take_messages(3)) == [b"m1", b"m2", b"m3"]
    a.disconnect()
    b = client_factory()
    b.subscribe(queue_dest, ack="client-individual")
    b.assert_no_message()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_ack_is_cumulative(client_factory, queue_dest, version):
    _fill(client_factory, queue_dest, 5)
    a = client_factory(version=version)
    a.subscribe(queue_dest, ack="client")
    msgs = a.take_messages(5)
    assert bodies(msgs) == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    if version == "1.2":
        # 1.2: a MESSAGE on a client/client-individual subscription MUST carry an `ack` header,
        # which is what ACK/NACK's `id` refers to.
        assert all(m.headers.get("ack") for m in msgs)
    assert all(_first_delivery(m) for m in msgs)
    a.ack(msgs[2])  # ack:client -> acknowledges m1..m3
    a.disconnect()
    b = client_factory(version=version)
    b.subscribe(queue_dest, ack="client")
    again = b.take_messages(2)
    assert sorted(bodies(again)) == [b"m4", b"m5"]
    assert all(m.headers.get("redelivered") == "true" for m in again), [m.headers for m in again]
    b.assert_no_message()
    b.ack(again[-1])


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_individual_ack(client_factory, queue_dest, version):
    _fill(client_factory, queue_dest, 5)
    a = client_factory(version=version)
    a.subscribe(queue_dest, ack="client-individual")
    msgs = a.take_messages(5)
    a.ack(msgs[2])  # only m3
    a.ack(msgs[4])  # and m5
    a.disconnect()
    b = client_factory(version=version)
    b.subscribe(queue_dest, ack="client-individual")
    again = b.take_messages(3)
    got = sorted(bodies(again))
    assert got == [b"m1", b"m2", b"m4"], got  # m3 and m5 were acked, nothing else
    assert all(m.headers.get("redelivered") == "true" for m in again)
    b.assert_no_message()
    for m in again:
        b.ack(m)


def test_unacked_redelivered_after_connection_drop(client_factory, queue_dest):
    """A consumer that dies (TCP closed, no DISCONNECT) gives its unacked messages back."""
    _fill(client_factory, queue_dest, 2)
    a = client_factory()
    a.subscribe(queue_dest, ack="client-individual")
    first = a.take_messages(2)
    assert all(_first_delivery(m) for m in first)
    a.abort_socket()
    b = client_factory()
    b.subscribe(queue_dest, ack="client-individual")
    again = b.take_messages(2)
    assert sorted(bodies(again)) == [b"m1", b"m2"]
    assert all(m.headers.get("redelivered") == "true" for m in again)
    for m in again:
        b.ack(m)
    b.assert_no_message()


def test_unacked_goes_to_competing_subscriber(client_factory, queue_dest):
    """While A holds an unacked message, B (already subscribed) gets it once A is gone."""
    a = client_factory()
    a.subscribe(queue_dest, ack="client-individual", headers={"prefetch-count": "1"})
    _fill(client_factory, queue_dest, 1)
    m = a.next_message()
    assert m.body == b"m1"
    b = client_factory()
    b.subscribe(queue_dest, ack="client-individual")
    b.assert_no_message(0.2)  # A still holds it
    a.disconnect()
    again = b.next_message()
    assert again.body == b"m1"
    assert again.headers.get("redelivered") == "true"
    b.ack(again)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_redelivers(client_factory, queue_dest, version):
    _fill(client_factory, queue_dest, 1)
    a = client_factory(version=version)
    a.subscribe(queue_dest, ack="client-individual")
    m = a.next_message()
    assert m.body == b"m1" and _first_delivery(m)
    # RabbitMQ requeues a NACKed message by default (its `requeue` header defaults to true);
    # rdmq does the same. The spec only says NACK means "not consumed".
    a.nack(m)
    again = a.next_message()
    assert again.body == b"m1"
    assert again.headers.get("redelivered") == "true"
    a.ack(again)
    a.assert_no_message()
    a.disconnect()
    b = client_factory(version=version)
    b.subscribe(queue_dest, ack="client-individual")
    b.assert_no_message()


def test_ack_with_receipt_then_nothing_left(client_factory, queue_dest):
    _fill(client_factory, queue_dest, 3)
    a = client_factory()
    a.subscribe(queue_dest, ack="client-individual")
    for m in a.take_messages(3):
        a.ack(m)  # each ACK waits for its RECEIPT
    a.disconnect()
    b = client_factory()
    b.subscribe(queue_dest, ack="client-individual")
    b.assert_no_message()


def test_prefetch_count_limits_unacked(client_factory, queue_dest):
    # `prefetch-count` is RabbitMQ's SUBSCRIBE header (rdmq accepts it as the subscription's
    # credit). Not in the spec, but both brokers honour it.
    _fill(client_factory, queue_dest, 5)
    a = client_factory()
    a.subscribe(queue_dest, ack="client-individual", headers={"prefetch-count": "2"})
    first = a.take_messages(2)
    a.assert_no_message()
    a.ack(first[0])
    third = a.next_message()
    assert third.body == b"m3"
    a.assert_no_message()

"""BEGIN / COMMIT / ABORT, with SEND and ACK inside transactions."""

from conftest import bodies, drain_until, uid


def test_commit_delivers(client_factory, queue_dest):
    cons = client_factory()
    cons.subscribe(queue_dest)
    prod = client_factory()
    tx = prod.begin()
    prod.send(queue_dest, b"t1", transaction=tx)
    prod.send(queue_dest, b"t2", transaction=tx)
    # (no receipts on transactional SENDs here: RabbitMQ holds them until COMMIT, see
    # test_receipts.py::test_receipt_for_transactional_send)
    prod.send("/topic/it.sync", b"barrier", receipt=True)  # the SENDs above were read
    cons.assert_no_message()  # nothing before COMMIT
    prod.commit(tx)
    assert bodies(cons.take_messages(2)) == [b"t1", b"t2"]


def test_abort_discards(client_factory, queue_dest):
    cons = client_factory()
    cons.subscribe(queue_dest)
    prod = client_factory()
    tx = prod.begin()
    prod.send(queue_dest, b"aborted-1", transaction=tx)
    prod.send(queue_dest, b"aborted-2", transaction=tx)
    prod.abort(tx)
    prod.send(queue_dest, b"marker")  # outside any transaction, after the ABORT
    before, _ = drain_until(cons, b"marker")
    assert before == []
    cons.assert_no_message()


def test_non_transactional_send_is_not_held(client_factory, queue_dest):
    cons = client_factory()
    cons.subscribe(queue_dest)
    prod = client_factory()
    tx = prod.begin()
    prod.send(queue_dest, b"in-tx", transaction=tx)
    prod.send(queue_dest, b"outside")
    assert cons.next_message().body == b"outside"
    prod.commit(tx)
    assert cons.next_message().body == b"in-tx"


def test_commit_spans_destinations(client_factory, queue_dest, topic_dest):
    qc = client_factory()
    qc.subscribe(queue_dest)
    tc = client_factory()
    tc.subscribe(topic_dest)
    prod = client_factory()
    tx = prod.begin()
    prod.send(queue_dest, b"q", transaction=tx)
    prod.send(topic_dest, b"t", transaction=tx)
    prod.commit(tx)
    assert qc.next_message().body == b"q"
    assert tc.next_message().body == b"t"


def test_two_transactions_on_one_connection(client_factory, queue_dest):
    cons = client_factory()
    cons.subscribe(queue_dest)
    prod = client_factory()
    t1 = prod.begin()
    t2 = prod.begin()
    prod.send(queue_dest, b"from-t1", transaction=t1)
    prod.send(queue_dest, b"from-t2", transaction=t2)
    prod.abort(t1)
    prod.commit(t2)
    prod.send(queue_dest, b"marker")
    before, _ = drain_until(cons, b"marker")
    assert bodies(before) == [b"from-t2"]


def test_disconnect_aborts_open_transaction(client_factory, queue_dest):
    # Spec (BEGIN): transactions not committed are implicitly aborted on DISCONNECT or when
    # the TCP connection fails.
    prod = client_factory()
    tx = prod.begin()
    prod.send(queue_dest, b"never", transaction=tx)
    prod.disconnect()  # its RECEIPT comes after the SEND was read
    other = client_factory()
    other.send(queue_dest, b"marker")
    cons = client_factory()
    cons.subscribe(queue_dest)
    before, _ = drain_until(cons, b"marker")
    assert before == []


def test_ack_in_aborted_transaction_leaves_message_unacked(client_factory, queue_dest):
    prod = client_factory()
    prod.send(queue_dest, b"m1", receipt=True)
    a = client_factory()
    a.subscribe(queue_dest, ack="client-individual")
    m = a.next_message()
    tx = a.begin()
    a.ack(m, transaction=tx)
    a.abort(tx)
    a.disconnect()
    b = client_factory()
    b.subscribe(queue_dest, ack="client-individual")
    again = b.next_message()
    assert again.body == b"m1"
    assert again.headers.get("redelivered") == "true"
    b.ack(again)


def test_ack_in_committed_transaction_acks(client_factory, queue_dest):
    prod = client_factory()
    prod.send(queue_dest, b"m1")
    prod.send(queue_dest, b"m2", receipt=True)
    a = client_factory()
    a.subscribe(queue_dest, ack="client-individual")
    m1, m2 = a.take_messages(2)
    tx = a.begin()
    a.ack(m1, transaction=tx)
    a.commit(tx)
    a.disconnect()  # m2 was never acked
    b = client_factory()
    b.subscribe(queue_dest, ack="client-individual")
    again = b.next_message()
    assert again.body == b"m2"
    b.ack(again)
    b.assert_no_message()  # m1 stays acked


def test_commit_unknown_transaction_is_an_error(client_factory):
    c = client_factory()
    c.conn.commit(uid("no-such-tx"))
    err = c.listener.wait_error()
    assert "message" in err.headers

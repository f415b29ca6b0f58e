"""Heart-beating: negotiation, server-sent heart-beats, enforcement of the client's promise."""

import time

from conftest import RABBITMQ


def _hb(frame):
    sx, sy = (int(x) for x in frame.headers.get("heart-beat", "0,0").split(","))
    return sx, sy


def test_negotiated_and_sent_by_server(raw_factory):
    r = raw_factory()
    f = r.connect(heart_beat="1000,1000")
    sx, sy = _hb(f)
    # Both ways non-zero: the server will send (sx) and wants to receive (sy) heart-beats.
    assert sx > 0 and sy > 0, f.headers
    # Spec: the server sends every max(sx, cy) ms, cy being our 1000.
    interval = max(sx, 1000) / 1000
    # Keep our side of the bargain (every max(cx, sy) ms) so the server keeps us.
    our_every = max(1000, sy) / 1000 / 3
    t0 = time.monotonic()
    next_beat = t0
    watch = 2.5 * interval + 0.5
    r.eols.clear()
    while time.monotonic() - t0 < watch:
        if time.monotonic() >= next_beat:
            r.send(b"\n")
            next_beat += our_every
        try:
            got = r.read_frame(timeout=0.05)
        except TimeoutError:
            continue
        assert got is not None, "server closed a connection that was sending heart-beats"
        raise AssertionError(f"unexpected frame {got!r}")
    beats = [t for t in r.eols if t >= t0]
    assert len(beats) >= 2, f"{len(beats)} heart-beats from the server in {watch:.1f}s (interval {interval}s)"
    # No silence longer than the interval plus slack (RabbitMQ sends at half the interval).
    gaps = [b - a for a, b in zip([t0] + beats, beats)]
    assert max(gaps) <= interval * 1.5 + 0.3, gaps
    assert r.is_open_and_serving()


def test_no_heartbeats_when_not_asked(raw_factory):
    r = raw_factory()
    r.connect()  # no heart-beat header = 0,0
    r.eols.clear()
    try:
        r.read_frame(timeout=1.2)
        raise AssertionError("unexpected frame")
    except TimeoutError:
        pass
    # We asked for none (cy = 0), so the server must not send any.
    assert r.eols == [], f"{len(r.eols)} heart-beats although we asked for none"


def test_stomp_py_heartbeats(client_factory):
    c = client_factory(heartbeats=(1000, 1000))
    sx, sy = _hb(c.listener.connected_frame)
    assert sx > 0 and sy > 0
    assert c.conn.heartbeats != (0, 0)  # stomp.py agreed on heart-beating both ways
    time.sleep(2.6)
    assert c.listener.heartbeats >= 2, c.listener.heartbeats
    assert c.conn.is_connected() and not c.listener.disconnected
    c.send("/topic/it.hb.alive", b"x", receipt=True)


def test_silent_client_is_disconnected(raw_factory):
    """A client that promised heart-beats every 500 ms and sends nothing gets dropped, while one
    that keeps its promise on the same terms stays connected."""
    silent = raw_factory()
    f = silent.connect(heart_beat="500,0")
    sx, sy = _hb(f)
    assert sy > 0, f"server does not want our heart-beats: {f.headers}"
    chatty = raw_factory()
    chatty.connect(heart_beat="500,0")
    every = max(500, sy) / 1000 / 3

    # Spec: the server may consider the connection dead after max(cx, sy) ms (plus "some
    # tolerance for timing inaccuracies"). Bound: 10 s.
    # RabbitMQ counts heart-beat timeouts in whole seconds (500 ms -> 1 s) and drops the
    # connection after 3 silent periods: observed at 3.0 s for 500 ms, without an ERROR frame.
    bound = 10.0
    t0 = time.monotonic()
    next_beat = t0
    closed_after = None
    while time.monotonic() - t0 < bound:
        if time.monotonic() >= next_beat:
            chatty.send(b"\n")
            next_beat += every
        try:
            fr = silent.read_frame(timeout=0.05)
        except TimeoutError:
            continue
        if fr is None:
            closed_after = time.monotonic() - t0
            break
        assert fr.command == "ERROR", fr  # an ERROR before the close is allowed
    assert closed_after is not None, f"silent client still connected after {bound}s"
    # Not dropped before the negotiated interval had a chance to pass.
    assert closed_after >= max(500, sy) / 1000, closed_after
    if RABBITMQ:
        assert 2.0 <= closed_after <= 4.5, closed_after
    # The client that beat on time is still served.
    chatty.send(b"\n")
    assert chatty.is_open_and_serving()


def test_heartbeat_eols_between_frames_are_ignored(raw_factory):
    r = raw_factory()
    r.connect(heart_beat="1000,0")
    # EOLs (LF and CRLF) before and between frames are heart-beats and must not disturb framing.
    r.send(b"\n\r\n\n")
    assert r.is_open_and_serving()
    r.send(b"\n")
    assert r.is_open_and_serving()

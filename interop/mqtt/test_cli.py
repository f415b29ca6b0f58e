"""A second, independent client: mosquitto_pub / mosquitto_sub (the Mosquitto project's
command-line clients, libmosquitto), as subprocesses with -V mqttv311 / -V mqttv5.

A subset of the suite: QoS round trips, retained messages, a will set with --will-* and sent
when the process is killed, and a persistent session (-c -i ID). mosquitto_sub runs with -d
(its protocol trace), so the test knows when its SUBACK came, and -F prints each message as
MSG|qos|retain|topic|payload.
"""

import signal
import subprocess
import time

import pytest

from conftest import HOST, PORT, TIMEOUT, V5, cli_or_skip, cli_version, uid

FORMAT = "MSG|%q|%r|%t|%p"


class Sub:
    """mosquitto_sub in the background; waits for its SUBACK."""

    def __init__(self, version, topic, qos=1, extra=(), count=None):
        exe = cli_or_skip("mosquitto_sub")
        args = [exe, "-h", HOST, "-p", str(PORT), "-V", cli_version(version), "-t", topic,
                "-q", str(qos), "-d", "-F", FORMAT, *extra]
        if count is not None:
            args += ["-C", str(count), "-W", str(int(TIMEOUT) + 1)]
        # stdbuf: line-buffered stdout through the pipe, so each trace line arrives at once.
        stdbuf = cli_or_skip("stdbuf")
        self.count = count
        self.p = subprocess.Popen([stdbuf, "-oL", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self._read_until("received SUBACK")

    def _read_until(self, needle):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if needle in line:
                return
        self.kill()
        raise AssertionError(f"mosquitto_sub: no {needle!r}; output: {self.lines}")

    def messages(self, timeout=TIMEOUT):
        """Waits for the process to exit (-C n) and returns its MSG lines as tuples."""
        # Not communicate(): with a timeout it reads the pipe's fd directly and would lose what
        # readline() above already buffered (the MESSAGE can arrive in the SUBACK's segment).
        try:
            self.p.wait(timeout=timeout + 2)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mosquitto_sub did not exit; output: {self.lines}") from None
        self.lines += self.p.stdout.read().splitlines()
        assert self.p.returncode == 0, f"mosquitto_sub exit {self.p.returncode}: {self.lines}"
        got = [tuple(line.split("|", 4)[1:]) for line in self.lines if line.startswith("MSG|")]
        # mosquitto_sub -C n exits 0 also when the broker closes the connection first.
        assert self.count is None or len(got) >= self.count, (
            f"mosquitto_sub exited with {len(got)} of {self.count} messages: the broker closed "
            f"the connection? output: {self.lines}")
        return got

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.fixture
def subs():
    made = []

    def make(*a, **kw):
        s = Sub(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


def pub(version, topic, payload, qos=0, extra=()):
    """mosquitto_pub; returns its -d trace."""
    exe = cli_or_skip("mosquitto_pub")
    args = [exe, "-h", HOST, "-p", str(PORT), "-V", cli_version(version), "-t", topic,
            "-q", str(qos), "-d", *extra]
    args += ["-n"] if payload is None else ["-m", payload]
    r = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT + 5)
    assert r.returncode == 0, f"mosquitto_pub exit {r.returncode}: {r.stdout} {r.stderr}"
    return r.stdout


@pytest.mark.parametrize("pub_qos,sub_qos", [(0, 0), (1, 1), (2, 2), (2, 1), (1, 0)],
                         ids=["q0", "q1", "q2", "pub2-sub1", "pub1-sub0"])
def test_cli_round_trip(subs, topic, version, pub_qos, sub_qos):
    s = subs(version, topic, qos=sub_qos, count=1)
    trace = pub(version, topic, "hello from mosquitto_pub", qos=pub_qos)
    # The publisher's flow completed as its QoS says.
    done = {0: "sending PUBLISH", 1: "received PUBACK", 2: "received PUBCOMP"}[pub_qos]
    assert done in trace, trace
    got = s.messages()
    assert got == [(str(min(pub_qos, sub_qos)), "0", topic, "hello from mosquitto_pub")], s.lines


def test_cli_retained(subs, paho_factory, topic, version):
    """mosquitto_pub -r sets a retained message, a later mosquitto_sub gets it with retain 1;
    mosquitto_pub -r -n (a zero-length message) clears it."""
    pub(version, topic, "kept", qos=1, extra=["-r"])
    s = subs(version, topic, qos=1, count=1)
    assert s.messages() == [("1", "1", topic, "kept")], s.lines
    pub(version, topic, None, qos=1, extra=["-r"])
    check = paho_factory(version)
    check.subscribe(topic, 1)
    check.assert_no_message()


def test_cli_will(subs, paho_factory, topic, version):
    """mosquitto_sub --will-*: the will is published when the process is killed (SIGKILL: the
    kernel closes the socket, no DISCONNECT), and not when it exits normally (-C 1: DISCONNECT)."""
    watch = paho_factory(version)
    watch.subscribe(topic, 2)
    will = ["--will-topic", topic, "--will-qos", "1"]
    killed = subs(version, f"{topic}/x", extra=[*will, "--will-payload", "killed"])
    killed.kill(signal.SIGKILL)
    m = watch.next_message()
    assert (m.payload, m.qos, m.retain) == (b"killed", 1, False), m

    clean = subs(version, f"{topic}/y", count=1, extra=[*will, "--will-payload", "must-not-appear"])
    pub(version, f"{topic}/y", "bye", qos=1)
    assert clean.messages() == [("1", "0", f"{topic}/y", "bye")]
    watch.assert_no_message()


def test_cli_persistent_session(subs, end_sessions, topic, version):
    """mosquitto_sub -c -i ID (5.0: -x 60 Session Expiry) subscribes and exits (-E); QoS 1 and 2
    messages published meanwhile are delivered when it comes back with -c -i ID."""
    cid = uid("clisess")
    end_sessions.add(version, cid)
    persistent = ["-c", "-i", cid] + (["-x", "60"] if version == V5 else [])
    exe = cli_or_skip("mosquitto_sub")
    r = subprocess.run([exe, "-h", HOST, "-p", str(PORT), "-V", cli_version(version), "-t", topic,
                        "-q", "1", "-E", *persistent], capture_output=True, text=True, timeout=TIMEOUT + 5)
    assert r.returncode == 0, (r.stdout, r.stderr)
    pub(version, topic, "offline-1", qos=1)
    pub(version, topic, "offline-2", qos=2)
    # Coming back: the queued messages arrive after CONNACK, before (or without) any SUBACK;
    # no -t would do, but mosquitto_sub insists on one, so subscribe to the same topic again.
    exe_args = [exe, "-h", HOST, "-p", str(PORT), "-V", cli_version(version), "-t", topic, "-q", "1",
                "-C", "2", "-W", str(int(TIMEOUT) + 1), "-F", FORMAT, *persistent]
    r = subprocess.run(exe_args, capture_output=True, text=True, timeout=TIMEOUT + 5)
    assert r.returncode == 0, (r.stdout, r.stderr)
    got = [tuple(line.split("|", 4)[1:]) for line in r.stdout.splitlines() if line.startswith("MSG|")]
    assert got == [("1", "0", topic, "offline-1"), ("1", "0", topic, "offline-2")], r.stdout

"""A third client: rumqttc, the Rust MQTT client, through interop/mqtt/rumqttc-check (connect
3.1.1 and 5.0, QoS 1 and 2 round trips, retained message on subscribe, 5.0 user properties).

The binary is built separately (it has its own Cargo.toml and target dir) and found through
$RUMQTTC_CHECK_BIN; run.sh sets that to <repo>/target/rumqttc-check/release/rumqttc-check when
it exists. Without it the test is SKIPPED."""

import os
import subprocess

import pytest

from conftest import HOST, PORT

BUILD = ("CARGO_TARGET_DIR=target/rumqttc-check cargo build --release "
         "--manifest-path interop/mqtt/rumqttc-check/Cargo.toml")


def test_rumqttc_check():
    path = os.environ.get("RUMQTTC_CHECK_BIN")
    if not path:
        pytest.skip(f"RUMQTTC_CHECK_BIN not set (build it with: {BUILD})")
    if not os.access(path, os.X_OK):
        pytest.skip(f"RUMQTTC_CHECK_BIN={path} is not an executable (build it with: {BUILD})")
    r = subprocess.run([path, HOST, str(PORT)], capture_output=True, text=True, timeout=90)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"rumqttc-check exit {r.returncode}:\n{out}"
    oks = [line for line in r.stdout.splitlines() if line.startswith("ok ")]
    assert len(oks) == 9, out
    assert "9 checks passed" in r.stdout, out

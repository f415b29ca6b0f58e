//! The RDMA transport (`rdma://`) against the real server over real verbs: the transport cases
//! every client transport passes (round trip, a verified 10,000-message stream, mixed with TCP
//! both ways, rings filling up and draining, a consumer killed mid-stream), and a malformed
//! frame written through the rings.
//!
//! These need an RDMA device and the `rdma` build: `.ci/run` runs them inside the SoftRoCE VM
//! (`rxe-setup/vm.sh`), which sets `RDMQ_RDMA_ADDR` to the address of its rxe0 device.
//! Anywhere else each test prints SKIPPED with the reason and returns.

mod common;

use common::*;

/// The address of the RDMA device to listen on, or why the test cannot run here.
fn rdma_addr() -> Result<String, &'static str> {
    if !cfg!(feature = "rdma") {
        return Err("this build has no RDMA support (cargo test --features rdma)");
    }
    std::env::var("RDMQ_RDMA_ADDR")
        .map_err(|_| "RDMQ_RDMA_ADDR is not set (no RDMA device; run through rxe-setup/vm.sh)")
}

/// A server listening for RDMA on the device, and its rdma:// URL; `None` (after saying
/// SKIPPED) when there is no device.
fn server(shards: usize) -> Option<(Server, String)> {
    let addr = match rdma_addr() {
        Ok(a) => a,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    let server = Server::start_with(shards, &format!("rdma_listen = \"{addr}:0\"\n"));
    let url = server.rdma_url.clone().unwrap_or_else(|| {
        panic!(
            "RDMQ_RDMA_ADDR={addr} is set but the server has no RDMA listener:\n{}",
            server.log()
        )
    });
    Some((server, url))
}

#[test]
fn round_trip_and_request_reply() {
    let Some((server, url)) = server(2) else { return };
    common::transport::round_trip(&server, &url, "rdma");
    common::transport::topic_request_reply(&server, &url, "rdma");
}

/// Producer and consumer are two RDMA connections: the listener deals them out to both shards
/// in turn, so this also runs one on shard 1 (its own channel, PD, CQ and registration).
#[test]
fn stream_of_10k_verified_in_order() {
    let Some((mut server, url)) = server(2) else { return };
    common::transport::stream(&server, &url, &url, 10_000, "rdma-rdma");
    let log = server.stop();
    assert!(Server::counter(&log, "rdma_handed_off") >= 1, "nothing served by shard 1:\n{log}");
}

#[test]
fn producer_and_consumer_on_different_transports() {
    let Some((server, url)) = server(2) else { return };
    common::transport::stream(&server, &server.url, &url, 3_000, "tcp-rdma");
    common::transport::stream(&server, &url, &server.url, 3_000, "rdma-tcp");
}

#[test]
fn full_rings_stall_without_loss() {
    let Some((server, url)) = server(2) else { return };
    // The client's rings are 1 MiB: eight rings' worth crosses with the consumer stalled.
    common::transport::stall_and_recover(&server, &url, 1 << 20, "rdma");
    server.assert_serves();
}

#[test]
fn killed_consumer_messages_are_redelivered() {
    let Some((server, url)) = server(2) else { return };
    common::transport::killed_consumer_redelivered(&server, &url, "rdma");
}

/// Over RDMA the batch is copied once into the shard's message memory, as over shm, and each
/// delivered record is written by the NIC from there into the consumer's ring: no record byte
/// is copied on the way out, for a memory queue and an `fsync` one alike, and every message
/// arrives intact (checked by `copies`). The same holds when the producer is a TCP client of
/// another shard (every shard's message memory is registered).
#[test]
fn deliveries_are_written_from_message_memory_without_a_copy() {
    use common::transport::{copies, copies_n, COPIES_MESSAGES as N, COPIES_RECORD as RECORD};
    for durability in [rdmq_client::Durability::Memory, rdmq_client::Durability::Fsync] {
        let Some((server, url)) = server(1) else { return };
        let c = copies(server, &url, &url, durability);
        assert!((N * RECORD..=N * (RECORD + 24)).contains(&c.copy_in), "{durability:?}: {c:?}");
        assert_eq!(c.copy_deliver, 0, "{durability:?}: records copied on the way out: {c:?}");
        assert_eq!(c.rdma_gather, N * RECORD, "{durability:?}: {c:?}");
        assert_eq!(c.copy_journal, 0, "{durability:?}: {c:?}");
    }
    // A consumer that reads nothing until 30,000 (7 MB) are published: its ring fills, and
    // the deliveries that wait are still written from message memory once it drains.
    let Some((slow, url)) = server(1) else { return };
    let tcp = slow.url.clone();
    let c = copies_n(slow, &tcp, &url, rdmq_client::Durability::Memory, 30_000);
    assert_eq!((c.copy_deliver, c.rdma_gather), (0, 30_000 * RECORD), "slow consumer: {c:?}");
    // Two shards, producers over TCP: whichever shard a producer lands on, its batches are
    // delivered from where that shard received them.
    for _ in 0..3 {
        let Some((server, url)) = server(2) else { return };
        let tcp = server.url.clone();
        let c = copies(server, &tcp, &url, rdmq_client::Durability::Memory);
        assert_eq!(c.copy_deliver, 0, "TCP producer: records copied on the way out: {c:?}");
        assert_eq!(c.rdma_gather, N * RECORD, "{c:?}");
    }
}

#[cfg(feature = "rdma")]
#[test]
fn malformed_frame_closes_only_that_connection() {
    use rdmq_client::error_code as code;
    use rdmq_client::rdma::RdmaStream;
    use rdmq_client::wire::{self, FrameHeader, FRAME_HEADER_LEN};
    use std::time::Instant;

    let Some((mut server, url)) = server(1) else { return };
    let addr = url.strip_prefix("rdma://").expect("rdma url");
    let mut s = RdmaStream::connect(addr, 1 << 16).expect("rdma connect");
    let mut h = Vec::new();
    FrameHeader { length: 8, opcode: 0xEE, flags: 0, reserved: 0, request_id: 2 }.put(&mut h);
    h.extend_from_slice(&[0; 8]);
    assert_eq!(s.write_some(&h).unwrap(), h.len());
    let deadline = Instant::now() + RECV_TIMEOUT;
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 4096]);
    let mut frames = Vec::new();
    while Instant::now() < deadline {
        match s.read_until(&mut chunk, Some(deadline)) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some((h, body)) = wire::split_frame(&buf, usize::MAX).expect("valid frames") {
            let len = FRAME_HEADER_LEN + body.len();
            frames.push((h, body.to_vec()));
            buf.drain(..len);
        }
    }
    let errs = errors(&frames);
    assert_eq!(errs.len(), 1, "one ERROR for the unknown opcode: {frames:?}");
    assert_eq!(errs[0].0, code::PROTOCOL_ERROR, "{}", errs[0].1);
    server.assert_serves();
    let log = server.stop();
    assert!(Server::counter(&log, "protocol_errors") >= 1, "{log}");
}

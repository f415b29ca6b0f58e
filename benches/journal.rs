//! Journal micro-benchmarks: the ring's claim/release pair, and appending one batch per record
//! size (claim, copy in place, CRC32C, queue the span) with its write completion simulated, so
//! the figure is the CPU cost of the append path without the disk.

use std::cell::RefCell;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rdmq::broker::store::Store;
use rdmq::journal::ring::{Ring, HUGE_PAGE};
use rdmq::journal::{Journal, JournalStore};
use rdmq_client::wire::record::{BatchBuilder, BatchView, RecordMeta};
use rdmq_client::Durability;

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal_ring");
    let mut r = Ring::new(32 * HUGE_PAGE).unwrap();
    for len in [64usize, 4096, 65536] {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("claim_fill_release", len), &len, |b, &len| {
            b.iter(|| {
                let claim = r.claim(len).unwrap();
                r.bytes_mut(claim)[0] = 1;
                r.release(claim);
            })
        });
    }
    g.finish();
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal_append");
    let dir = std::env::temp_dir().join(format!("rdmq-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ring = Rc::new(RefCell::new(Ring::new(32 * HUGE_PAGE).unwrap()));
    for size in [64usize, 1024, 16384] {
        // One 64 KiB-ish batch of `size`-byte records, as a publisher's batch would arrive.
        let records = ((64 << 10) / (size + 40)).max(1);
        let mut batch = Vec::new();
        let mut b = BatchBuilder::begin(&mut batch);
        for _ in 0..records {
            b.push(&mut batch, &RecordMeta::default(), &vec![7u8; size]);
        }
        b.finish(&mut batch);
        let view = BatchView::decode(&batch).unwrap();
        let recs: Vec<&[u8]> = view.records().map(|(_, r)| r.bytes).collect();
        let bytes: usize = recs.iter().map(|r| r.len()).sum();
        let qdir = dir.join(format!("q{size}"));
        std::fs::create_dir_all(&qdir).unwrap();
        let j =
            Journal::open(&qdir, Durability::Fsync, 1 << 40, ring.clone(), Vec::new(), 0).unwrap();
        let j = Rc::new(RefCell::new(j));
        let mut store = JournalStore(j.clone());
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(records as u64));
        g.bench_with_input(BenchmarkId::new("batch_of_records", size), &size, |bench, _| {
            bench.iter(|| {
                store.append(seq, bytes, &mut recs.iter().copied()).unwrap();
                seq += records as u64;
                // Pretend the kernel wrote it, so the ring space comes back.
                let w = j.borrow_mut().next_write().unwrap();
                j.borrow_mut().write_done(w.tag, w.claim.len as i32);
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, ring, append);
criterion_main!(benches);

//! Journal micro-benchmarks: the arena's one copy of a received batch, and appending one batch
//! per record size (header, CRC32C over the records where they lie, queue the spans) with its
//! write completion simulated, so the figure is the CPU cost of the append path without the disk.

use std::cell::RefCell;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rdmq::arena::{Arena, HUGE_PAGE};
use rdmq::broker::store::Store;
use rdmq::broker::MsgRef;
use rdmq::journal::{Backlog, Journal, JournalStore};
use rdmq_client::wire::record::{BatchBuilder, BatchView, RecordMeta};
use rdmq_client::Durability;

fn arena(c: &mut Criterion) {
    let mut g = c.benchmark_group("arena");
    let mut a = Arena::new(32 * HUGE_PAGE).unwrap();
    for len in [64usize, 4096, 65536] {
        let src = vec![7u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("copy_and_drop", len), &len, |b, _| {
            b.iter(|| drop(a.copy(&src)))
        });
    }
    g.finish();
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal_append");
    let dir = std::env::temp_dir().join(format!("rdmq-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let backlog = Backlog::new(32 * HUGE_PAGE as u64);
    let mut arena = Arena::new(32 * HUGE_PAGE).unwrap();
    for size in [64usize, 1024, 16384] {
        // One 64 KiB-ish batch of `size`-byte records, as a publisher's batch would arrive.
        let records = ((64 << 10) / (size + 40)).max(1);
        let mut buf = Vec::new();
        let mut b = BatchBuilder::begin(&mut buf);
        for _ in 0..records {
            b.push(&mut buf, &RecordMeta::default(), &vec![7u8; size]);
        }
        b.finish(&mut buf);
        let batch = arena.copy(&buf);
        let recs: Vec<MsgRef> = BatchView::decode(&batch)
            .unwrap()
            .records()
            .map(|(at, r)| MsgRef {
                batch: batch.clone(),
                offset: at as u32,
                len: r.bytes.len() as u32,
            })
            .collect();
        let qdir = dir.join(format!("q{size}"));
        std::fs::create_dir_all(&qdir).unwrap();
        let j = Journal::open(&qdir, Durability::Fsync, 1 << 40, backlog.clone(), Vec::new(), 0)
            .unwrap();
        let j = Rc::new(RefCell::new(j));
        let mut store = JournalStore(j.clone());
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(records as u64));
        g.bench_with_input(BenchmarkId::new("batch_of_records", size), &size, |bench, _| {
            bench.iter(|| {
                store.append(seq, &mut recs.iter()).unwrap();
                seq += records as u64;
                // Pretend the kernel wrote it, so the backlog comes back.
                let w = j.borrow_mut().next_write().unwrap();
                j.borrow_mut().write_done(w.tag, w.len as i32);
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, arena, append);
criterion_main!(benches);

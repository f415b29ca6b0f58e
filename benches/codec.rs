//! Codec micro-benchmarks: building a PUBLISH batch, validating it as the server does (CRC32C
//! and every record), and walking a DELIVER frame as the client does.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rdmq_client::wire::deliver::DeliverWriter;
use rdmq_client::wire::publish::{DestKind, PublishWriter};
use rdmq_client::wire::record::{BatchView, RecordMeta};
use rdmq_client::wire::{self, Command};

fn publish_frame(records: usize, size: usize) -> Vec<u8> {
    let payload = vec![7u8; size];
    let mut out = Vec::new();
    let mut w = PublishWriter::begin(&mut out, DestKind::Queue, "bench.queue", 1);
    for i in 0..records {
        w.push(&mut out, &RecordMeta { id: i as u64, ..Default::default() }, &payload);
    }
    w.finish(&mut out);
    out
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [64usize, 1024] {
        let records = (64 << 10) / (size + 40);
        g.throughput(Throughput::Elements(records as u64));
        let payload = vec![7u8; size];
        let mut out = Vec::with_capacity(128 << 10);
        g.bench_with_input(BenchmarkId::new("encode_publish", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                let mut w = PublishWriter::begin(&mut out, DestKind::Queue, "bench.queue", 1);
                for i in 0..records {
                    w.push(&mut out, &RecordMeta { id: i as u64, ..Default::default() }, &payload);
                }
                w.finish(&mut out);
                out.len()
            })
        });
        let frame = publish_frame(records, size);
        g.bench_with_input(BenchmarkId::new("decode_publish", size), &size, |b, _| {
            b.iter(|| {
                let (h, body) = wire::split_frame(&frame, usize::MAX).unwrap().unwrap();
                match wire::decode(&h, body).unwrap() {
                    Command::Publish(p) => p.batch.count,
                    _ => unreachable!(),
                }
            })
        });
        let body = &frame[wire::FRAME_HEADER_LEN..];
        let Command::Publish(p) =
            wire::decode(&wire::FrameHeader::decode(&frame, usize::MAX).unwrap(), body).unwrap()
        else {
            unreachable!()
        };
        let batch = BatchView::decode(p.batch.bytes).unwrap();
        let mut deliver = Vec::new();
        let mut w = DeliverWriter::begin(&mut deliver, 1);
        for (i, (_, r)) in batch.records().enumerate() {
            w.push(&mut deliver, i as u64, 1, 0, r.bytes);
        }
        w.finish(&mut deliver);
        g.bench_with_input(BenchmarkId::new("decode_deliver", size), &size, |b, _| {
            b.iter(|| {
                let (h, body) = wire::split_frame(&deliver, usize::MAX).unwrap().unwrap();
                let Command::Deliver(d) = wire::decode(&h, body).unwrap() else { unreachable!() };
                d.entries().map(|e| e.record.payload().len()).sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);

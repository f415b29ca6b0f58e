//! Mailbox micro-benchmarks: the uncontended push/pop pair and a two-thread transfer of batches,
//! as shards exchange them.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdmq::mailbox::mailbox;

fn mailboxes(c: &mut Criterion) {
    let mut g = c.benchmark_group("mailbox");
    g.throughput(Throughput::Elements(1));
    let (mut tx, mut rx) = mailbox::<u64>(1024);
    g.bench_function("push_pop_same_thread", |b| {
        b.iter(|| {
            tx.push(1).unwrap();
            rx.pop().unwrap()
        })
    });
    const BATCHES: u64 = 100_000;
    g.throughput(Throughput::Elements(BATCHES));
    g.bench_function("cross_thread_100k_batches", |b| {
        b.iter(|| {
            let (mut tx, mut rx) = mailbox::<Vec<u64>>(1024);
            let t = std::thread::spawn(move || {
                let mut got = 0;
                while got < BATCHES {
                    if rx.pop().is_some() {
                        got += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
            for i in 0..BATCHES {
                let mut item = vec![i];
                while let Err(back) = tx.push(item) {
                    item = back;
                    std::hint::spin_loop();
                }
            }
            t.join().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, mailboxes);
criterion_main!(benches);

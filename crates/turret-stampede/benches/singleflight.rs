//! Single-flight: the cost of an uncontended call, and fan-out of one result to 1,000 waiters.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::future::{join, join_all};
use turret_stampede::SingleFlight;

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let flights: SingleFlight<u64, u64> = SingleFlight::new();
    let mut group = c.benchmark_group("singleflight");
    group.bench_function("uncontended_call", |b| {
        let mut key = 0u64;
        b.iter(|| {
            key = key.wrapping_add(1);
            rt.block_on(flights.call(key, move || async move { Ok(black_box(key)) }))
        })
    });
    // The baseline: the same future spawned and awaited without single-flight.
    group.bench_function("spawn_baseline", |b| {
        let mut key = 0u64;
        b.iter(|| {
            key = key.wrapping_add(1);
            rt.block_on(async { tokio::spawn(async move { black_box(key) }).await })
        })
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let flights: SingleFlight<u64, u64> = SingleFlight::new();
    c.bench_function("singleflight/fan_out_1000_waiters", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let mut rx = Some(rx);
                // `join_all` polls every call once before the sender fires: the first call
                // starts the flight, the 999 others join it.
                let calls = join_all((0..1000).map(|_| {
                    let rx = rx.take();
                    flights.call(1, move || async move {
                        if let Some(rx) = rx {
                            let _ = rx.await;
                        }
                        Ok(7)
                    })
                }));
                let (results, ()) = join(calls, async {
                    let _ = tx.send(());
                })
                .await;
                black_box(results.len())
            })
        })
    });
}

criterion_group!(benches, uncontended, fan_out);
criterion_main!(benches);

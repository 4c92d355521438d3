//! How soon a waiter on another instance gets the lease after the holder releases it:
//! woken by the published release (turret) vs a fixed 500 ms poll (nginx's cache lock).
//!
//! Needs `redis-server` on the PATH (it is started on a free port). Prints p50/p99 too.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use turret_redis::Redis;
use turret_stampede::{LeaseLock, RedisLock};
use turret_testkit::RedisServer;

const HOLD: Duration = Duration::from_millis(50);

async fn connect(server: &RedisServer) -> Redis {
    turret_testkit::connect!(server).await
}

/// One round: the holder holds for `HOLD`, releases; returns release → waiter holds.
async fn round<F, Fut>(holder: &LeaseLock<RedisLock>, wait: F) -> Duration
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Instant> + Send + 'static,
{
    let guard = loop {
        if let Some(g) = holder.try_acquire("bench").await.unwrap() {
            break g;
        }
        tokio::task::yield_now().await;
    };
    let waiter = tokio::spawn(wait());
    tokio::time::sleep(HOLD).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = waiter.await.unwrap();
    acquired.saturating_duration_since(released)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).copied().unwrap_or_default()
}

fn wakeup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let (holder, waiter) = rt.block_on(async {
        let holder = LeaseLock::redis(connect(&server).await).ttl(Duration::from_secs(30));
        let waiter = LeaseLock::redis(connect(&server).await).max_poll(Duration::from_secs(30));
        // Warm up the waiter's subscription.
        let _ = waiter.acquire("warm", Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        (holder, waiter)
    });
    let pubsub = Mutex::new(Vec::new());
    let polled = Mutex::new(Vec::new());

    let mut group = c.benchmark_group("lease_wakeup");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("pubsub", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let w = waiter.clone();
                    let d = round(&holder, move || async move {
                        let g = w.acquire("bench", Duration::from_secs(10)).await.unwrap();
                        let at = Instant::now();
                        g.release().await.unwrap();
                        at
                    })
                    .await;
                    pubsub.lock().unwrap().push(d);
                    total += d;
                }
                total
            })
        })
    });
    group.bench_function("poll_500ms", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let w = waiter.clone();
                    let d = round(&holder, move || async move {
                        loop {
                            if let Some(g) = w.try_acquire("bench").await.unwrap() {
                                let at = Instant::now();
                                g.release().await.unwrap();
                                return at;
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    })
                    .await;
                    polled.lock().unwrap().push(d);
                    total += d;
                }
                total
            })
        })
    });
    group.finish();
    for (name, samples) in [("pubsub", pubsub), ("poll_500ms", polled)] {
        let mut samples = samples.into_inner().unwrap();
        if samples.is_empty() {
            continue;
        }
        let p50 = percentile(&mut samples, 0.50);
        let p99 = percentile(&mut samples, 0.99);
        println!(
            "lease_wakeup/{name}: n={} p50={p50:?} p99={p99:?}",
            samples.len()
        );
    }
}

criterion_group!(benches, wakeup);
criterion_main!(benches);

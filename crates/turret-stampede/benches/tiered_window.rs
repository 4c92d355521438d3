//! The two-tier store's invalidation window: from a write on instance A (its `put`
//! returning) to the first read on instance B that sees the new value, B having the old one
//! in its L1. Prints p50/p99/max over 1,000 writes.
//!
//! `cargo bench -p turret-stampede --bench tiered_window` (a redis-server on `PATH`; or
//! `TURRET_REDIS_URL=redis://…` for an existing server). Not a criterion bench: one sample
//! is one write, and the number is a latency distribution, not a throughput.

use std::time::{Duration, Instant};

use bytes::Bytes;
use turret_redis::{Redis, RedisConfig};
use turret_stampede::{TieredStore, ValueStore, store::Entry};

const WRITES: usize = 1_000;

fn entry(value: &str) -> Entry<'static> {
    Entry {
        bytes: Bytes::from(value.to_owned()),
        fence: 0,
        ttl: Duration::from_secs(60),
        tags: &[],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = std::env::var("TURRET_REDIS_URL")
        .is_err()
        .then(turret_testkit::RedisServer::start);
    let url = std::env::var("TURRET_REDIS_URL")
        .unwrap_or_else(|_| server.as_ref().map(|s| s.url()).unwrap_or_default());
    let connect = async || {
        Redis::connect(RedisConfig::from_url(&url).unwrap().prefix("window:"))
            .await
            .unwrap()
    };
    let a = TieredStore::new(connect().await);
    let b = TieredStore::new(connect().await);
    while !(a.subscribed() && b.subscribed()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let key = "window:key";
    let mut windows = Vec::with_capacity(WRITES);
    let mut spins = 0u64;
    for i in 0..WRITES {
        let old = format!("v{i}");
        a.put(key, entry(&old)).await.unwrap();
        // B holds the old value in its L1 (its fill may be dropped while A's message is
        // in flight: read until it sticks).
        loop {
            let got = b.get(key).await.unwrap();
            if got.as_deref() == Some(old.as_bytes()) && b.l1_holds(key) {
                break;
            }
        }
        let new = format!("w{i}");
        a.put(key, entry(&new)).await.unwrap();
        let written = Instant::now();
        loop {
            if b.get(key).await.unwrap().as_deref() == Some(new.as_bytes()) {
                break;
            }
            spins += 1;
            tokio::task::yield_now().await;
        }
        windows.push(written.elapsed());
    }
    windows.sort();
    let at = |q: f64| windows[((windows.len() as f64 * q) as usize).min(windows.len() - 1)];
    println!(
        "tiered window over {WRITES} writes: p50 {:?}, p99 {:?}, max {:?} ({spins} stale reads on B in all)",
        at(0.50),
        at(0.99),
        windows[windows.len() - 1]
    );
}

//! Hits of the data cache: `fetch` and `#[cached]` on the memory cache, a two-tier (L1) hit,
//! a Redis hit next to one raw `GET` round trip, and the `cached` crate's `#[cached]`
//! (memory) as the peer. `cargo bench -p turret-stampede --bench data_cache` (a
//! redis-server on `PATH`). Each sample runs its iterations inside one `block_on`, so the
//! runtime's entry is not measured.

use std::{convert::Infallible, hint::black_box, time::Duration, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use turret_redis::{Redis, RedisConfig, redis};
use turret_stampede::{Options, StampedeCache, TieredStore, cached};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: i64,
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
        price_cents: 1999,
    }
}

#[cached(cache = cache, ttl = "10m", key = "product:{id}")]
async fn get_product(cache: &StampedeCache, id: u64) -> Product {
    product(id)
}

#[cached::proc_macro::cached(time = 600)]
async fn peer_get_product(id: u64) -> Product {
    product(id)
}

/// A hand-written `fetch`, borrowing the cache and the options as a handler does.
async fn fetch_hit(cache: &StampedeCache, options: &Options) -> Result<Product, Infallible> {
    cache
        .fetch("product:7", options, || async { Ok(product(7)) })
        .await
}

fn bench_async<F, Fut>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: Future,
{
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(f().await);
                }
                start.elapsed()
            })
        })
    });
}

fn hits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter(); // the tiered store's listener is spawned on it
    let server = turret_testkit::RedisServer::start();
    let connect = || {
        rt.block_on(Redis::connect(
            RedisConfig::from_url(&server.url())
                .unwrap()
                .prefix("bench:"),
        ))
        .unwrap()
    };
    let options = Options::ttl(Duration::from_secs(600));

    let memory = StampedeCache::new();
    let redis = connect();
    let on_redis = StampedeCache::redis(redis.clone());
    let tiered_redis = connect();
    let tiered = StampedeCache::tiered(TieredStore::new(tiered_redis.clone()), tiered_redis);
    rt.block_on(async {
        for cache in [&memory, &on_redis, &tiered] {
            let _: Result<Product, Infallible> = cache
                .fetch("product:7", &options, || async { Ok(product(7)) })
                .await;
            get_product(cache, 7).await;
        }
        peer_get_product(7).await;
        // The tiered cache fills its L1 only once its subscription is live.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _: Result<Product, Infallible> = tiered
                .fetch("product:7", &options, || async { Ok(product(7)) })
                .await;
            if let turret_stampede::AnyStore::Tiered(store) = tiered.store()
                && store.l1_holds("product:7")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the L1 never filled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _: () = redis
            .query(redis::cmd("SET").arg("bench:raw").arg(vec![0u8; 40]))
            .await
            .unwrap();
    });

    bench_async(c, &rt, "memory fetch hit", || fetch_hit(&memory, &options));
    bench_async(c, &rt, "memory #[cached] hit", || get_product(&memory, 7));
    bench_async(c, &rt, "peer: cached crate #[cached] hit", || {
        peer_get_product(7)
    });
    bench_async(c, &rt, "two-tier L1 fetch hit", || {
        fetch_hit(&tiered, &options)
    });
    bench_async(c, &rt, "redis fetch hit", || fetch_hit(&on_redis, &options));
    bench_async(c, &rt, "raw redis GET round trip", || async {
        let v: Option<Vec<u8>> = redis
            .query(redis::cmd("GET").arg("bench:raw"))
            .await
            .unwrap();
        v
    });
}

criterion_group!(benches, hits);
criterion_main!(benches);

//! A Redis-only data-cache hit: turret's `#[cached]` and `fetch` on `StampedeCache::redis`
//! against the `cached` crate's `#[io_cached]` with its `AsyncRedisCache`, and one raw
//! redis-rs `GET` of the same size as the floor. The same value and method as
//! `crates/turret-stampede/benches/data_cache.rs`: each sample runs its iterations inside
//! one `block_on` of a current-thread runtime; a loopback redis-server started by the bench.

use std::{
    convert::Infallible,
    hint::black_box,
    sync::OnceLock,
    time::{Duration, Instant},
};

use cached::{AsyncRedisCache, proc_macro::io_cached};
use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use turret_redis::{Redis, RedisConfig, redis};
use turret_stampede::{Options, StampedeCache, cached};

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

/// The peer's Redis URL, set before its first call.
static PEER_URL: OnceLock<String> = OnceLock::new();

#[derive(Debug, Clone)]
struct PeerError(String);

#[io_cached(
    map_error = r##"|e| PeerError(format!("{e:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, Product>",
    create = r##" {
        AsyncRedisCache::new("peer:product:", Duration::from_secs(600))
            .set_connection_string(PEER_URL.get().expect("the peer's URL"))
            .build()
            .await
            .expect("the peer's Redis cache")
    } "##
)]
async fn peer_get_product(id: u64) -> Result<Product, PeerError> {
    Ok(product(id))
}

#[cached(cache = cache, ttl = "10m", key = "product:{id}")]
async fn get_product(cache: &StampedeCache, id: u64) -> Product {
    product(id)
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

fn redis_hits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = turret_testkit::RedisServer::start();
    PEER_URL.set(server.url()).unwrap();
    let redis = rt
        .block_on(Redis::connect(
            RedisConfig::from_url(&server.url())
                .unwrap()
                .prefix("bench:"),
        ))
        .unwrap();
    let cache = StampedeCache::redis(redis.clone());
    let options = Options::ttl(Duration::from_secs(600));
    rt.block_on(async {
        get_product(&cache, 7).await;
        let _: Result<Product, Infallible> = cache
            .fetch("fetched:7", &options, || async { Ok(product(7)) })
            .await;
        peer_get_product(7).await.unwrap();
        let _: () = redis
            .query(redis::cmd("SET").arg("bench:raw").arg(vec![0u8; 40]))
            .await
            .unwrap();
    });

    bench_async(c, &rt, "redis #[cached] hit", || get_product(&cache, 7));
    bench_async(c, &rt, "redis fetch hit", || async {
        let r: Result<Product, Infallible> = cache
            .fetch("fetched:7", &options, || async { Ok(product(7)) })
            .await;
        r
    });
    bench_async(c, &rt, "peer: cached crate #[io_cached] redis hit", || async {
        peer_get_product(7).await.unwrap()
    });
    bench_async(c, &rt, "raw redis GET round trip", || async {
        let v: Option<Vec<u8>> = redis
            .query(redis::cmd("GET").arg("bench:raw"))
            .await
            .unwrap();
        v
    });
}

criterion_group!(benches, redis_hits);
criterion_main!(benches);

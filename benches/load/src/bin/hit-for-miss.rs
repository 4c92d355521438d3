//! Measures what the hit-for-miss marker buys an uncacheable URL: bursts of concurrent GETs
//! through the response cache to an origin that takes 1 s and answers `Cache-Control:
//! private`, with the marker on (the default) and off, in memory and as a fleet of two
//! instances on one real redis-server (each with its own connections, two-tier storage and
//! fill lease).
//!
//! ```text
//! cargo run --release -p turret-bench --bin hit-for-miss
//! ```
//!
//! Prints, per setup and burst, the fastest and slowest request and the origin's calls.

use std::{
    convert::Infallible,
    future::poll_fn,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http::{HeaderValue, Request, Response, header};
use tower::{Layer, Service, service_fn};
use turret_cache::{ResponseCacheLayer, TieredStorage};
use turret_redis::{Redis, RedisConfig};
use turret_stampede::LeaseLock;
use turret_testkit::RedisServer;

const ORIGIN_TIME: Duration = Duration::from_secs(1);
const CONCURRENCY: usize = 10;

#[tokio::main]
async fn main() {
    let redis = RedisServer::start();
    println!("setup\thit-for-miss\tburst\tfastest\tslowest\torigin calls");
    for marker in [true, false] {
        let lifetime = if marker {
            turret_cache::DEFAULT_HIT_FOR_MISS
        } else {
            Duration::ZERO
        };
        run(
            "memory",
            vec![ResponseCacheLayer::new().hit_for_miss(lifetime)],
            marker,
        )
        .await;
        let mut fleet = Vec::new();
        for _ in 0..2 {
            let conn = Redis::connect(RedisConfig::from_url(&redis.url()).unwrap())
                .await
                .unwrap();
            fleet.push(
                ResponseCacheLayer::with_storage(TieredStorage::new(conn.clone()))
                    .fill_lease(LeaseLock::redis(conn), Duration::from_secs(5))
                    .hit_for_miss(lifetime),
            );
        }
        run("fleet of 2 on Redis", fleet, marker).await;
    }
}

async fn run(setup: &str, layers: Vec<ResponseCacheLayer>, marker: bool) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let origin = service_fn(move |_req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(ORIGIN_TIME).await;
            let mut res = Response::new(String::from("personal"));
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            Ok::<_, Infallible>(res)
        }
    });
    let services: Vec<_> = layers.iter().map(|l| l.layer(origin.clone())).collect();
    // A different URL per setup, so that no marker carries over between setups.
    let path = format!("/me/{}/{marker}", setup.replace(' ', "-"));
    for burst in 1..=3 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|i| {
                let mut svc = services[i % services.len()].clone();
                let req = Request::get(path.as_str())
                    .header(header::HOST, "bench.example")
                    .body(())
                    .unwrap();
                tokio::spawn(async move {
                    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
                    let res = svc.call(req).await.unwrap();
                    assert!(res.status().is_success());
                    started.elapsed()
                })
            })
            .collect();
        let mut took = Vec::new();
        for task in tasks {
            took.push(task.await.unwrap());
        }
        let fastest = took.iter().min().unwrap();
        let slowest = took.iter().max().unwrap();
        println!(
            "{setup}\t{}\t{burst}\t{:.3} s\t{:.3} s\t{}",
            if marker { "on" } else { "off" },
            fastest.as_secs_f64(),
            slowest.as_secs_f64(),
            calls.load(Ordering::SeqCst)
        );
    }
}

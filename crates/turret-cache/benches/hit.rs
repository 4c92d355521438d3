//! The memory hit path: key build + look-up + response build, through the whole service
//! (`call` and one poll of its future), against the bare handler and an empty one (the floor
//! of any service in this harness: the request moved in and dropped, a response made); the
//! tiered storage's L1 hit (a `redis-server` started by the test kit behind it); and the
//! binary entry codec
//! (`CachedResponse::encode` / `decode`) of the same stored 1 KB response, the work a Redis
//! hit adds on top of the round trip.

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, header};
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use turret_cache::{
    CacheStorage, CachedResponse, MemoryStorage, ResponseCacheLayer, TieredStorage,
};
use turret_redis::{Redis, RedisConfig};
use turret_testkit::RedisServer;

/// Polls a future once; the hit path and the handler below are ready at once.
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the benchmarked path should not wait"),
    }
}

fn request() -> Request<()> {
    Request::get("/products?page=2&sort=price")
        .header(header::HOST, "shop.example")
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .body(())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let handler = service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Full::<Bytes>::from(vec![b'x'; 1024]));
        res.headers_mut()
            .insert(header::CACHE_CONTROL, "max-age=3600".parse().unwrap());
        res.headers_mut()
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        Ok::<_, Infallible>(res)
    });
    let storage = MemoryStorage::default();
    let mut cached = ResponseCacheLayer::with_storage(storage.clone()).layer(handler);
    // Fill the cache (the miss runs on a spawned task).
    rt.block_on(cached.call(request())).unwrap();
    let stored = poll_once(storage.get("http://shop.example/products?page=2&sort=price")).unwrap();
    let entry: CachedResponse = (*stored[0]).clone();

    let mut group = c.benchmark_group("hit");
    group.bench_function("memory_hit", |b| {
        b.iter_batched(
            request,
            |req| poll_once(cached.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut bare = handler;
    group.bench_function("bare_handler", |b| {
        b.iter_batched(
            request,
            |req| poll_once(bare.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut empty = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    });
    group.bench_function("empty_handler", |b| {
        b.iter_batched(
            request,
            |req| poll_once(empty.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // The tiered storage: filled once through Redis, then every hit is an L1 hit.
    let server = RedisServer::start();
    let redis = rt
        .block_on(Redis::connect(
            RedisConfig::from_url(&server.url()).unwrap(),
        ))
        .unwrap();
    let tiered = TieredStorage::new(redis);
    let mut tiered_cached = ResponseCacheLayer::with_storage(tiered).layer(handler);
    // A miss stores in Redis; the next get copies the entry into the L1 (once the
    // invalidation listener is subscribed): from then on a hit is answered at once.
    let mut l1_hits = false;
    for _ in 0..200 {
        let mut cx = Context::from_waker(Waker::noop());
        let mut fut = pin!(tiered_cached.call(request()));
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            if res.unwrap().headers()["x-cache"] == "HIT" {
                l1_hits = true;
                break;
            }
        } else {
            let res = rt.block_on(fut).unwrap();
            rt.block_on(http_body_util::BodyExt::collect(res.into_body()))
                .unwrap();
        }
        rt.block_on(tokio::time::sleep(std::time::Duration::from_millis(10)));
    }
    assert!(l1_hits, "the tiered bench measures L1 hits");
    group.bench_function("tiered_l1_hit", |b| {
        b.iter_batched(
            request,
            |req| poll_once(tiered_cached.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let encoded = entry.encode();
    let mut group = c.benchmark_group("entry");
    group.throughput(criterion::Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode_1k", |b| b.iter(|| entry.encode()));
    group.bench_function("decode_1k", |b| {
        b.iter(|| CachedResponse::decode(std::hint::black_box(&encoded)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

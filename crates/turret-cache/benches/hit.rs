//! The memory hit path: key build + look-up + response build, through the whole service
//! (`call` and one poll of its future), against the bare handler; and the binary entry codec
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
use turret_cache::{CacheStorage, CachedResponse, MemoryStorage, ResponseCacheLayer};

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
        .enable_time()
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

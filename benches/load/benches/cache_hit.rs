//! The memory cache hit through the whole service (`call`, then the future polled to its end;
//! neither waits): turret-cache's `ResponseCacheLayer` against http-cache-tower-server with
//! its moka manager, same request, same 1 KB body, same `Cache-Control: max-age=3600`.
//! The response bodies are not read (both hold the stored bytes).

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
use turret_cache::ResponseCacheLayer;

/// Polls a future until it is ready, without a runtime: a hit never waits, so this polls
/// once; a peer whose hit did wait would be charged for each extra poll.
fn run<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(fut);
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("the benchmarked hit did not complete");
}

fn request() -> Request<()> {
    Request::get("/items/7")
        .header(header::HOST, "bench.local")
        .header(header::ACCEPT, "*/*")
        .body(())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let body = Bytes::from(vec![b'x'; 1024]);
    let handler = service_fn(move |_req: Request<()>| {
        let body = body.clone();
        async move {
            let mut res = Response::new(Full::new(body));
            res.headers_mut()
                .insert(header::CACHE_CONTROL, "max-age=3600".parse().unwrap());
            res.headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            Ok::<_, Infallible>(res)
        }
    });

    let mut turret = ResponseCacheLayer::new().layer(handler.clone());
    // Fill (the miss runs on a spawned task), then check that the next call is a hit.
    rt.block_on(turret.call(request())).unwrap();
    let res = run(turret.call(request())).unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");

    let manager = http_cache::MokaManager::new(moka::future::Cache::new(10_000));
    let mut peer = http_cache_tower_server::ServerCacheLayer::new(manager).layer(handler.clone());
    // The store is a spawned task: let it run.
    rt.block_on(async {
        peer.call(request()).await.unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    });
    let res = run(peer.call(request())).unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");

    let mut group = c.benchmark_group("cache_hit");
    group.bench_function("turret_memory", |b| {
        b.iter_batched(
            request,
            |req| run(turret.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("http_cache_tower_server_moka", |b| {
        b.iter_batched(
            request,
            |req| run(peer.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut bare = handler;
    group.bench_function("bare_handler", |b| {
        b.iter_batched(
            request,
            |req| run(bare.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

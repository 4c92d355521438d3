//! ETag cost per response through the layer, for 1 KB, 64 KB and 1 MB bodies, against the
//! same handler without the layer.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use turret_conditional::ConditionalLayer;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("etag");
    for (name, size) in [
        ("1KB", 1024usize),
        ("64KB", 64 * 1024),
        ("1MB", 1024 * 1024),
    ] {
        let body = Bytes::from(vec![b'x'; size]);
        group.throughput(Throughput::Bytes(size as u64));
        let handler = {
            let body = body.clone();
            service_fn(move |_req: Request<()>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            })
        };
        let with = ServiceBuilder::new()
            .layer(ConditionalLayer::new())
            .service(handler.clone());
        group.bench_with_input(BenchmarkId::new("with_layer", name), &(), |b, _| {
            b.to_async(&rt).iter(|| {
                let mut svc = with.clone();
                async move {
                    let svc = svc.ready().await.unwrap();
                    let res = svc.call(Request::new(())).await.unwrap();
                    assert!(res.headers().contains_key(http::header::ETAG));
                    res.into_body().collect().await.unwrap()
                }
            });
        });
        group.bench_with_input(BenchmarkId::new("without_layer", name), &(), |b, _| {
            b.to_async(&rt).iter(|| {
                let svc = handler.clone();
                async move {
                    let res = svc.oneshot(Request::new(())).await.unwrap();
                    res.into_body().collect().await.unwrap()
                }
            });
        });
        group.bench_with_input(BenchmarkId::new("revalidate_304", name), &(), |b, _| {
            let tag = rt
                .block_on(with.clone().oneshot(Request::new(())))
                .unwrap()
                .headers()[http::header::ETAG]
                .clone();
            b.to_async(&rt).iter(|| {
                let svc = with.clone();
                let tag = tag.clone();
                async move {
                    let req = Request::get("/")
                        .header("if-none-match", tag)
                        .body(())
                        .unwrap();
                    let res = svc.oneshot(req).await.unwrap();
                    assert_eq!(res.status(), 304);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

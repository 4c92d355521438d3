//! In-memory keyed decision: turret's memory backend against governor's keyed limiter; and
//! a plan of one, two and three quotas (all-or-nothing) against two governor limiters
//! chained (which spend the first limiter's quota on a request the second refuses); and the
//! whole service: `RateLimitLayer` (peer IP key, the five fields on the response) over an
//! empty handler, against the empty handler alone (the floor of this harness: a request
//! made, moved in and dropped, a response made) — the layer's own cost is the difference.

use std::{hint::black_box, num::NonZeroU32, time::Duration};

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::pin,
    task::{Context, Poll, Waker},
};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Layer, Service, service_fn};
use turret_ratelimit::{MemoryBackend, Plan, Quota, RateLimitLayer};

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255))
        .collect()
}

fn decision(c: &mut Criterion) {
    // A quota no benchmark loop can exhaust, so every decision is the admit path.
    let quota = Quota::per_second(1_000_000_000);
    for n in [1usize, 100_000] {
        let keys = keys(n);
        let mut group = c.benchmark_group(format!("keyed decision, {n} keys"));

        let turret = MemoryBackend::new();
        let mut i = 0;
        group.bench_function("turret memory GCRA", |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(turret.decide_now("default", &keys[i], &quota, 1).allowed)
            })
        });

        let governor = governor::RateLimiter::keyed(governor::Quota::per_second(
            NonZeroU32::new(1_000_000_000).unwrap(),
        ));
        let mut j = 0;
        group.bench_function("governor keyed (dashmap)", |b| {
            b.iter(|| {
                j = (j + 1) % keys.len();
                black_box(governor.check_key(&keys[j]).is_ok())
            })
        });
        group.finish();
    }
}

fn plans(c: &mut Criterion) {
    let huge = 1_000_000_000;
    let one = Plan::new("default", Quota::per_second(huge));
    let two = one.clone().and("hourly", Quota::per_hour(huge));
    let three = two
        .clone()
        .and("daily", Quota::per(Duration::from_secs(86_400), huge));
    for n in [1usize, 100_000] {
        let keys = keys(n);
        let mut group = c.benchmark_group(format!("plan decision, {n} keys"));
        for (name, plan) in [("1 quota", &one), ("2 quotas", &two), ("3 quotas", &three)] {
            let turret = MemoryBackend::new();
            let mut i = 0;
            group.bench_function(format!("turret memory, {name}"), |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    black_box(
                        turret
                            .decide_plan_now("default", &keys[i], plan, 1, Duration::ZERO)
                            .allowed(),
                    )
                })
            });
        }
        let per_second = governor::RateLimiter::keyed(governor::Quota::per_second(
            NonZeroU32::new(huge).unwrap(),
        ));
        let per_hour =
            governor::RateLimiter::keyed(governor::Quota::per_hour(NonZeroU32::new(huge).unwrap()));
        let mut j = 0;
        group.bench_function("governor keyed, 2 limiters chained", |b| {
            b.iter(|| {
                j = (j + 1) % keys.len();
                black_box(
                    per_second.check_key(&keys[j]).is_ok() && per_hour.check_key(&keys[j]).is_ok(),
                )
            })
        });
        group.finish();
    }
}

/// Polls a future once; both services below answer at once.
fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the benchmarked path should not wait"),
    }
}

fn service(c: &mut Criterion) {
    let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
    let request = move || {
        let mut req = Request::get("/items/7").body(()).unwrap();
        req.extensions_mut().insert(peer);
        req
    };
    let empty = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    });
    let mut group = c.benchmark_group("service");
    let mut limited = RateLimitLayer::new(Quota::per_second(1_000_000_000)).layer(empty);
    let res = poll_once(limited.call(request())).unwrap();
    assert!(res.headers().contains_key("ratelimit"), "the fields are on");
    group.bench_function("turret memory, five fields", |b| {
        b.iter(|| black_box(poll_once(limited.call(request())).unwrap()))
    });
    let mut bare = empty;
    group.bench_function("empty handler", |b| {
        b.iter(|| black_box(poll_once(bare.call(request())).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, decision, plans, service);
criterion_main!(benches);

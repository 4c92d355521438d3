//! A lease whose release fails while Redis is failing (its breaker open) is released as soon
//! as Redis is back, so misses on its key do not wait for the lease TTL.

#![cfg(feature = "full")]

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{blocking, connect, layers::get, recovery_deadline, until};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::sync::watch;
use tower::{Layer, ServiceExt, service_fn};
use turret::{
    cache::{RedisStorage, ResponseCacheLayer},
    redis::{BreakerState, Redis, redis},
    stampede::{LeaseLock, StampedeCache},
};
use turret_testkit::RedisServer;

fn lease_keys(server: &RedisServer) -> Vec<String> {
    server.cmd(&["KEYS", "turret:lock:*"])
}

/// Pauses Redis and sends PINGs through `redis` until its breaker is open.
async fn pause_and_open_breaker(server: &RedisServer, redis: &Redis) {
    blocking(|| server.pause(Duration::from_secs(1)));
    while redis.breaker_state() != BreakerState::Open {
        let _ = redis.query::<String>(&redis::cmd("PING")).await;
    }
}

async fn reconnected(redis: &Redis) {
    let ok = until(Duration::from_secs(5), async || {
        redis.query::<String>(&redis::cmd("PING")).await.is_ok()
    })
    .await;
    assert!(ok.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_fill_lease_released_while_the_breaker_is_open_does_not_hold_up_the_next_miss() {
    let server = RedisServer::start();
    let (ra, rb) = (connect(&server.url()).await, connect(&server.url()).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate_tx, gate) = watch::channel(false);
    let origin = {
        let calls = calls.clone();
        service_fn(move |_req: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut gate = gate.clone();
            async move {
                if n == 1 {
                    let _ = gate.wait_for(|open| *open).await;
                }
                let mut res = Response::new(Full::<Bytes>::from("v"));
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=60"),
                );
                Ok::<_, Infallible>(res)
            }
        })
    };
    // Defaults: lease wait 2 s, lease TTL 10 s.
    let instance = |redis: Redis| {
        ResponseCacheLayer::with_storage(RedisStorage::new(redis.clone()))
            .fill_lease(LeaseLock::redis(redis), turret::cache::DEFAULT_LEASE_WAIT)
            .layer(origin.clone())
    };
    let (a, b) = (instance(ra.clone()), instance(rb.clone()));
    let first = tokio::spawn(a.oneshot(get("/k")));
    assert!(
        until(Duration::from_secs(5), async || calls
            .load(Ordering::SeqCst)
            == 1)
        .await
        .is_some()
    );
    assert_eq!(lease_keys(&server).len(), 1);

    // Redis fails while A fills: A's breaker opens, A's fill finishes (store and release
    // refused by the open breaker).
    pause_and_open_breaker(&server, &ra).await;
    gate_tx.send(true).unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);

    // Redis is back.
    reconnected(&ra).await;
    reconnected(&rb).await;
    let back = Instant::now();
    let leftover = lease_keys(&server);
    let res = b.oneshot(get("/k")).await.unwrap();
    let took = back.elapsed();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        took < recovery_deadline(),
        "the first miss after Redis came back took {took:?} (lease keys left: {leftover:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_lease_released_while_the_breaker_is_open_does_not_hold_up_the_next_call() {
    let server = RedisServer::start();
    let (ra, rb) = (connect(&server.url()).await, connect(&server.url()).await);
    // Defaults: lock wait 5 s, lease TTL 10 s.
    let a = StampedeCache::redis(ra.clone());
    let b = StampedeCache::redis(rb.clone());
    let (gate_tx, gate) = watch::channel(false);
    let entered = Arc::new(AtomicUsize::new(0));
    let first = {
        let (entered, mut gate) = (entered.clone(), gate.clone());
        tokio::spawn(async move {
            a.get_or_compute("k", Duration::from_secs(60), move || async move {
                entered.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, Infallible>(String::from("A"))
            })
            .await
        })
    };
    assert!(
        until(Duration::from_secs(5), async || entered
            .load(Ordering::SeqCst)
            == 1)
        .await
        .is_some()
    );
    assert_eq!(lease_keys(&server).len(), 1);

    pause_and_open_breaker(&server, &ra).await;
    gate_tx.send(true).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), "A");

    reconnected(&ra).await;
    reconnected(&rb).await;
    let back = Instant::now();
    let leftover = lease_keys(&server);
    let got = b
        .get_or_compute("k", Duration::from_secs(60), || async {
            Ok::<_, Infallible>(String::from("B"))
        })
        .await
        .unwrap();
    let took = back.elapsed();
    let stored: i64 = server.cmd(&["EXISTS", "turret:val:{k}"]);
    assert!(
        took < recovery_deadline(),
        "the first call after Redis came back took {took:?} and got {got:?}, stored: {stored} (lease keys left: {leftover:?})"
    );
}

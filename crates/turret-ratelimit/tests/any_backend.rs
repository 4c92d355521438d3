//! The backend chosen at run time: `RateLimitLayer::backend_from` / `redis` and the same for
//! `ConcurrencyLimitLayer` give one layer type whether state lives in memory or on a real
//! Redis.
#![cfg(feature = "redis")]

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response, StatusCode};
use tokio::sync::{Semaphore, watch};
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use turret_ratelimit::{
    AnyBackend, ConcurrencyLimitLayer, PeerIp, PermitBody, Quota, RateLimitLayer, ResponseBody,
};
use turret_redis::{Redis, RedisConfig};
use turret_testkit::RedisServer;

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;
type CSvc = BoxCloneService<Request<String>, Response<PermitBody<String>>, Infallible>;

async fn connect(url: &str) -> Redis {
    let config = RedisConfig::from_url(url)
        .unwrap()
        .command_timeout(Duration::from_millis(500));
    Redis::connect(config).await.unwrap()
}

/// The layer a configuration builds: one type, whichever backend. The annotation is the
/// point: both arms of the choice are `RateLimitLayer` with its default parameters.
fn limiter(redis: Option<Redis>) -> RateLimitLayer {
    RateLimitLayer::new(Quota::per_hour(5)).backend_from(redis)
}

fn instance(layer: RateLimitLayer) -> Svc {
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        |_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::from("ok"))) },
    )))
}

fn get(ip: &str) -> Request<String> {
    let mut r = Request::new(String::new());
    r.extensions_mut()
        .insert(format!("{ip}:1").parse::<SocketAddr>().unwrap());
    r
}

/// Requests admitted out of `n` sent from one client, alternating between the instances.
async fn admitted(instances: &[Svc], n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let res = instances[i % instances.len()]
            .clone()
            .oneshot(get("198.51.100.9"))
            .await
            .unwrap();
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected status {other}"),
        }
    }
    ok
}

#[tokio::test]
async fn backend_from_none_keeps_a_quota_per_instance_in_memory() {
    let layer = limiter(None);
    assert!(matches!(layer_backend(&layer), Backend::Memory));
    let instances = [instance(limiter(None)), instance(limiter(None))];
    // Each instance counts on its own: 5 each, 10 in all out of 20.
    assert_eq!(admitted(&instances, 20).await, 10);
}

#[tokio::test]
async fn backend_from_some_shares_one_quota_between_instances_on_redis() {
    let server = RedisServer::start();
    let a = limiter(Some(connect(&server.url()).await));
    assert!(matches!(layer_backend(&a), Backend::Redis));
    // Separate connections: two processes in all but name.
    let instances = [
        instance(a),
        instance(limiter(Some(connect(&server.url()).await))),
    ];
    assert_eq!(admitted(&instances, 20).await, 5, "one quota for both");
    let probe = connect(&server.url()).await;
    let keys: usize = probe
        .query(&turret_redis::redis::cmd("DBSIZE"))
        .await
        .unwrap();
    assert!(keys >= 1, "the state is on Redis");
}

#[tokio::test]
async fn redis_keeps_the_layer_type_and_shares_the_quota() {
    let server = RedisServer::start();
    let layer = |redis| -> RateLimitLayer { RateLimitLayer::new(Quota::per_hour(3)).redis(redis) };
    let instances = [
        instance(layer(connect(&server.url()).await)),
        instance(layer(connect(&server.url()).await)),
    ];
    assert_eq!(admitted(&instances, 9).await, 3);
}

/// Which variant a layer's backend is, read through its `Debug` output (the field is
/// private).
enum Backend {
    Memory,
    Redis,
}

fn layer_backend(layer: &RateLimitLayer) -> Backend {
    let debug = format!("{layer:?}");
    if debug.contains("backend: Memory(") {
        Backend::Memory
    } else if debug.contains("backend: Redis(") {
        Backend::Redis
    } else {
        panic!("no backend in {debug}")
    }
}

#[test]
fn any_backend_converts_from_an_option_of_redis() {
    assert!(matches!(AnyBackend::from(None), AnyBackend::Memory(_)));
}

/// The slow request's handler: tells the test it is running (its slot is held by then),
/// then waits until the test opens the gate.
#[derive(Clone)]
struct Gate {
    entered: Arc<Semaphore>,
    open: watch::Receiver<bool>,
}

impl Gate {
    fn new() -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let gate = Gate {
            entered: Arc::new(Semaphore::new(0)),
            open: rx,
        };
        (gate, tx)
    }
}

/// A concurrency-limited instance whose handler holds `/slow` requests at `gate`.
fn concurrency_instance(layer: ConcurrencyLimitLayer<PeerIp>, gate: Gate) -> CSvc {
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        move |req: Request<String>| {
            let mut gate = gate.clone();
            async move {
                if req.uri().path() == "/slow" {
                    gate.entered.add_permits(1);
                    let _ = gate.open.wait_for(|open| *open).await;
                }
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }
        },
    )))
}

fn request(path: &str) -> Request<String> {
    let mut r = Request::get(path).body(String::new()).unwrap();
    r.extensions_mut()
        .insert("203.0.113.4:1".parse::<SocketAddr>().unwrap());
    r
}

/// Whether instance `b` admits a request while instance `a` holds the key's one slot.
async fn second_admitted_while_first_in_flight(
    a: CSvc,
    b: CSvc,
    gate: &Gate,
    open: &watch::Sender<bool>,
) -> bool {
    let slow = tokio::spawn(a.oneshot(request("/slow")));
    // The slow request is in its handler: it holds its slot.
    gate.entered.acquire().await.unwrap().forget();
    let second = b.oneshot(request("/fast")).await.unwrap().status();
    open.send(true).unwrap();
    let first = slow.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    match second {
        StatusCode::OK => true,
        StatusCode::TOO_MANY_REQUESTS => false,
        other => panic!("unexpected status {other}"),
    }
}

#[tokio::test]
async fn concurrency_backend_from_none_counts_per_instance() {
    let (gate, open) = Gate::new();
    let layer = || ConcurrencyLimitLayer::new("exports", 1).backend_from(None);
    let a = concurrency_instance(layer(), gate.clone());
    let b = concurrency_instance(layer(), gate.clone());
    assert!(second_admitted_while_first_in_flight(a, b, &gate, &open).await);
}

#[tokio::test]
async fn concurrency_backend_from_some_counts_for_the_fleet_on_redis() {
    let server = RedisServer::start();
    let (gate, open) = Gate::new();
    let a = concurrency_instance(
        ConcurrencyLimitLayer::new("exports", 1).backend_from(Some(connect(&server.url()).await)),
        gate.clone(),
    );
    let b = concurrency_instance(
        ConcurrencyLimitLayer::new("exports", 1).redis(connect(&server.url()).await),
        gate.clone(),
    );
    assert!(!second_admitted_while_first_in_flight(a, b.clone(), &gate, &open).await);
    // The slot is given back once the first response is dropped (on Redis, by a detached
    // `ZREM`): the second instance admits again.
    let mut again = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..100 {
        again = b.clone().oneshot(request("/fast")).await.unwrap().status();
        if again == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, StatusCode::OK);
}

//! The response cache as a fleet: several instances (each its own Redis handles, layer,
//! single-flight and L1) in front of one origin, sharing one real redis-server.

#![cfg(feature = "redis")]

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use turret_cache::{ResponseCacheLayer, TieredStorage};
use turret_redis::{BreakerConfig, Redis, RedisConfig};
use turret_stampede::LeaseLock;
use turret_testkit::{RedisCluster, RedisServer};

fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .command_timeout(Duration::from_millis(500))
        .breaker(BreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_millis(200),
        })
}

/// One origin for the whole fleet: counts its calls, answers after `delay` with
/// `cache_control` and a body naming the call (`v1`, `v2`…), or `status` when it is set.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    status: Arc<AtomicUsize>,
    delay: Duration,
    cache_control: &'static str,
}

impl Origin {
    fn new(delay: Duration, cache_control: &'static str) -> Self {
        Self {
            calls: Arc::default(),
            status: Arc::new(AtomicUsize::new(200)),
            delay,
            cache_control,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail_with(&self, status: u16) {
        self.status.store(usize::from(status), Ordering::SeqCst);
    }
}

/// The origin as a tower service.
fn serve(
    origin: Origin,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<()>| {
        let origin = origin.clone();
        async move {
            let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(origin.delay).await;
            let status = origin.status.load(Ordering::SeqCst) as u16;
            let mut res = Response::new(Full::from(format!("v{n}")));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            let h = res.headers_mut();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(origin.cache_control),
            );
            h.insert("surrogate-key", HeaderValue::from_static("products"));
            Ok::<_, Infallible>(res)
        }
    })
}

/// An instance: its own Redis handle, two-tier storage, fill lease and layer.
async fn instance(server: &RedisServer) -> ResponseCacheLayer {
    instance_at(&server.url()).await
}

async fn instance_at(url: &str) -> ResponseCacheLayer {
    let redis = Redis::connect(config(url)).await.unwrap();
    let storage = TieredStorage::new(redis.clone());
    ResponseCacheLayer::with_storage(storage)
        .fill_lease(LeaseLock::redis(redis), Duration::from_secs(5))
}

fn get(path: &str) -> Request<()> {
    Request::get(path)
        .header(header::HOST, "shop.example")
        .body(())
        .unwrap()
}

async fn fetch<S>(svc: S, path: &str) -> (StatusCode, String, String)
where
    S: Service<Request<()>, Response = Response<turret_cache::ResponseBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let res = svc.oneshot(get(path)).await.unwrap();
    let status = res.status();
    let x_cache = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, x_cache, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_with_250_concurrent_misses_each_make_one_origin_call() {
    let server = RedisServer::start();
    let origin = Origin::new(Duration::from_millis(200), "max-age=60");
    let mut services = Vec::new();
    for _ in 0..4 {
        services.push(instance(&server).await.layer(serve(origin.clone())));
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let svc = services[i % 4].clone();
        tasks.push(tokio::spawn(
            async move { fetch(svc, "/reports/top").await },
        ));
    }
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "v1");
    }
    assert_eq!(origin.calls(), 1, "one origin call for the whole fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_on_one_instance_reaches_every_instance_l1_included() {
    let server = RedisServer::start();
    let origin = Origin::new(Duration::ZERO, "max-age=300");
    let layers: Vec<ResponseCacheLayer> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(instance(&server).await);
        }
        v
    };
    let services: Vec<_> = layers
        .iter()
        .map(|l| l.layer(serve(origin.clone())))
        .collect();
    // Every instance holds v1 (the first fill), in its L1 after its first read.
    for svc in &services {
        for _ in 0..2 {
            let (_, _, body) = fetch(svc.clone(), "/products/1").await;
            assert_eq!(body, "v1");
        }
    }
    assert_eq!(origin.calls(), 1);
    let (_, x_cache, _) = fetch(services[3].clone(), "/products/1").await;
    assert_eq!(x_cache, "HIT");

    layers[0].invalidate_tag("products").await.unwrap();
    // No instance serves v1 afterwards: the message reaches each L1 within milliseconds.
    let deadline = Instant::now() + Duration::from_secs(2);
    for svc in &services {
        loop {
            let (_, _, body) = fetch(svc.clone(), "/products/1").await;
            if body != "v1" {
                break;
            }
            assert!(Instant::now() < deadline, "an instance still serves v1");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_every_request_is_answered_from_the_origin() {
    let mut server = RedisServer::start();
    let origin = Origin::new(Duration::ZERO, "max-age=300");
    let svc = instance(&server).await.layer(serve(origin.clone()));
    let (_, _, body) = fetch(svc.clone(), "/a").await;
    assert_eq!(body, "v1");
    server.stop();
    for i in 0..20 {
        // Distinct keys: nothing in any tier.
        let (status, _, _) = fetch(svc.clone(), &format!("/miss/{i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(origin.calls(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_refreshes_once_in_the_fleet() {
    let server = RedisServer::start();
    let origin = Origin::new(
        Duration::from_millis(100),
        "max-age=1, stale-while-revalidate=60",
    );
    let mut services = Vec::new();
    for _ in 0..4 {
        services.push(instance(&server).await.layer(serve(origin.clone())));
    }
    let (_, _, body) = fetch(services[0].clone(), "/a").await;
    assert_eq!(body, "v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let svc = services[i % 4].clone();
        tasks.push(tokio::spawn(async move { fetch(svc, "/a").await }));
    }
    for task in tasks {
        let (status, x_cache, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!((x_cache.as_str(), body.as_str()), ("STALE", "v1"));
    }
    // Let the one refresh finish, then every instance serves v2.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(origin.calls(), 2, "exactly one background refresh");
    for svc in &services {
        let (_, _, body) = fetch(svc.clone(), "/a").await;
        assert_eq!(body, "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_stored_copy_when_the_origin_fails() {
    let server = RedisServer::start();
    let origin = Origin::new(Duration::ZERO, "max-age=1, stale-if-error=60");
    let svc = instance(&server).await.layer(serve(origin.clone()));
    fetch(svc.clone(), "/a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.fail_with(500);
    let (status, x_cache, body) = fetch(svc.clone(), "/a").await;
    assert_eq!(
        (status, x_cache.as_str(), body.as_str()),
        (StatusCode::OK, "STALE", "v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_instances_share_fills_and_invalidations() {
    let cluster = RedisCluster::start(3);
    let origin = Origin::new(Duration::from_millis(100), "max-age=300");
    let layers = [
        instance_at(&cluster.url()).await,
        instance_at(&cluster.url()).await,
    ];
    let services: Vec<_> = layers
        .iter()
        .map(|l| l.layer(serve(origin.clone())))
        .collect();
    // Keys in many slots; each one filled once for both instances.
    let paths: Vec<String> = (0..20).map(|i| format!("/products/{i}")).collect();
    let mut tasks = Vec::new();
    for path in &paths {
        for svc in &services {
            for _ in 0..5 {
                let (svc, path) = (svc.clone(), path.clone());
                tasks.push(tokio::spawn(async move { fetch(svc, &path).await }));
            }
        }
    }
    let mut before = std::collections::HashMap::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let path = &paths[i / 10];
        assert_eq!(before.entry(path.clone()).or_insert(body.clone()), &body);
    }
    assert_eq!(origin.calls(), paths.len(), "one origin call per key");

    layers[1].invalidate_tag("products").await.unwrap();
    // No instance serves a body from before the invalidation (L1s included).
    let deadline = Instant::now() + Duration::from_secs(2);
    for svc in &services {
        for path in &paths {
            loop {
                let (_, _, body) = fetch(svc.clone(), path).await;
                if body != before[path] {
                    break;
                }
                assert!(Instant::now() < deadline, "{path} still serves {body}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// An origin answering `private` that counts the most requests it holds at once; while
/// `wait_for` is above zero each request waits (up to 5 s) until that many were in at once.
#[derive(Clone, Default)]
struct Uncacheable {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    wait_for: Arc<AtomicUsize>,
}

fn serve_uncacheable(
    origin: Uncacheable,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<()>| {
        let origin = origin.clone();
        async move {
            let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let now = origin.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            origin.most.fetch_max(now, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            tokio::time::sleep(Duration::from_millis(50)).await;
            while origin.most.load(Ordering::SeqCst) < origin.wait_for.load(Ordering::SeqCst)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            origin.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut res = Response::new(Full::from(format!("private {n}")));
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            Ok::<_, Infallible>(res)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncacheable_url_is_not_serialised_behind_the_fleet_fill_lease() {
    let server = RedisServer::start();
    let origin = Uncacheable::default();
    let services = [
        instance(&server)
            .await
            .layer(serve_uncacheable(origin.clone())),
        instance(&server)
            .await
            .layer(serve_uncacheable(origin.clone())),
    ];
    let burst = || {
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let svc = services[i % 2].clone();
                tokio::spawn(async move { fetch(svc, "/me").await })
            })
            .collect();
        async move {
            let mut bodies = Vec::new();
            for task in tasks {
                let (status, x_cache, body) = task.await.unwrap();
                assert_eq!((status, x_cache.as_str()), (StatusCode::OK, "MISS"));
                bodies.push(body);
            }
            bodies.sort();
            bodies.dedup();
            bodies.len()
        }
    };
    // The first burst learns that /me is uncacheable (one fill leaves the marker in Redis).
    assert_eq!(burst().await, 10, "nobody got another's private response");
    assert_eq!(origin.calls.load(Ordering::SeqCst), 10);
    // The second: both instances send all ten to the origin at once, none waits its turn
    // for the lease (the origin holds each request until the ten are in).
    origin.most.store(0, Ordering::SeqCst);
    origin.wait_for.store(10, Ordering::SeqCst);
    assert_eq!(burst().await, 10);
    assert_eq!(origin.most.load(Ordering::SeqCst), 10);
    assert_eq!(origin.calls.load(Ordering::SeqCst), 20);
}

/// An instance whose backend is chosen at run time: `backend_from(Some(redis))` or `None`.
async fn chosen(url: Option<&str>) -> ResponseCacheLayer {
    let redis = match url {
        Some(url) => Some(Redis::connect(config(url)).await.unwrap()),
        None => None,
    };
    ResponseCacheLayer::new().backend_from(redis)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_from_some_shares_one_cache_and_one_fill_for_the_fleet() {
    let server = RedisServer::start();
    let origin = Origin::new(Duration::from_millis(200), "max-age=60");
    let mut services = Vec::new();
    for _ in 0..4 {
        let layer = chosen(Some(&server.url())).await;
        services.push(layer.layer(serve(origin.clone())));
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let svc = services[i % 4].clone();
        tasks.push(tokio::spawn(async move { fetch(svc, "/products/9").await }));
    }
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "v1");
    }
    assert_eq!(
        origin.calls(),
        1,
        "one fill for the fleet: the lease is on Redis too"
    );
    let keys: usize = server.cmd(&["DBSIZE"]);
    assert!(keys >= 1, "the entry is on Redis");
}

#[tokio::test]
async fn backend_from_none_keeps_a_cache_per_instance_in_memory() {
    let origin = Origin::new(Duration::ZERO, "max-age=60");
    let a = chosen(None).await.layer(serve(origin.clone()));
    let b = chosen(None).await.layer(serve(origin.clone()));
    assert_eq!(fetch(a.clone(), "/products/9").await.1, "MISS");
    assert_eq!(fetch(a, "/products/9").await.1, "HIT");
    // The other instance has its own memory: its first read is a miss.
    assert_eq!(fetch(b, "/products/9").await.1, "MISS");
    assert_eq!(origin.calls(), 2);
}

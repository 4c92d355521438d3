//! The rate limiter against a real redis-server and a real 3-master Redis Cluster.
// These tests run on a real Redis (some in memory as well): they need the `redis` feature.
#![cfg(feature = "redis")]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use turret_ratelimit::{
    Algorithm, Backend, Decide, FailureMode, Plan, Quota, RateLimitLayer, RedisBackend,
    ResponseBody,
};
use turret_redis::{BreakerConfig, Redis, RedisConfig};
use turret_testkit::{RedisCluster, RedisServer};

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::SlidingLog,
];

fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .command_timeout(Duration::from_millis(500))
}

async fn redis(url: &str) -> Redis {
    Redis::connect(config(url)).await.unwrap()
}

/// A service counting the requests that reached it.
fn service(
    layer: RateLimitLayer<turret_ratelimit::PeerIp, RedisBackend>,
    hits: Arc<AtomicUsize>,
) -> Svc {
    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(service_fn(
        move |_: Request<String>| {
            hits.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        },
    )))
}

/// The status of one request from `ip`.
async fn status(svc: &Svc, ip: &str) -> StatusCode {
    svc.clone().oneshot(get(ip)).await.unwrap().status()
}

fn get(ip: &str) -> Request<String> {
    let mut r = Request::new(String::new());
    r.extensions_mut()
        .insert(format!("{ip}:1").parse::<SocketAddr>().unwrap());
    r
}

async fn decide(backend: &RedisBackend, key: &str, quota: &Quota) -> turret_ratelimit::Decision {
    match backend.decide("p", key, &Plan::new("p", *quota), 1, Duration::ZERO) {
        Decide::Pending(f) => f.await.unwrap().decisions()[0],
        Decide::Ready(r) => r.unwrap().decisions()[0],
    }
}

#[tokio::test]
async fn every_algorithm_admits_exactly_the_quota_then_refuses_with_a_retry_time() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    backend.preload().await.unwrap();
    for alg in ALGORITHMS {
        // A long period: the whole test happens "at once" for the quota.
        let quota = Quota::per_hour(5).with_algorithm(alg);
        let key = format!("k-{alg:?}");
        for i in 0..5u32 {
            let d = decide(&backend, &key, &quota).await;
            assert!(d.allowed, "{alg:?} request {i}");
            assert_eq!(d.remaining, 4 - i, "{alg:?}");
            assert_eq!(d.limit, 5);
        }
        let d = decide(&backend, &key, &quota).await;
        assert!(!d.allowed, "{alg:?}");
        assert_eq!(d.remaining, 0);
        let retry = d.retry_after.expect("a retry time");
        // The sliding window counter may need part of the next window too: its current
        // count becomes the previous one and must decay below the quota.
        let bound = if alg == Algorithm::SlidingWindow {
            7200
        } else {
            3600
        };
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(bound),
            "{alg:?} {retry:?}"
        );
        if alg == Algorithm::Gcra {
            // One request's worth comes back every 12 minutes.
            assert!(
                retry > Duration::from_secs(719) && retry <= Duration::from_secs(720),
                "{retry:?}"
            );
        }
    }
}

#[tokio::test]
async fn gcra_on_redis_refills_at_the_rate() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    let quota = Quota::per_second(20).burst(1); // one every 50 ms
    assert!(decide(&backend, "k", &quota).await.allowed);
    let d = decide(&backend, "k", &quota).await;
    assert!(!d.allowed);
    tokio::time::sleep(d.retry_after.unwrap()).await;
    assert!(
        decide(&backend, "k", &quota).await.allowed,
        "admitted after retry_after"
    );
}

#[tokio::test]
async fn a_refusal_writes_nothing_and_keys_expire() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    let quota = Quota::per_minute(0);
    assert!(!decide(&backend, "nobody", &quota).await.allowed);
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert!(keys.is_empty(), "{keys:?}");
    assert!(
        decide(&backend, "someone", &Quota::per_minute(10))
            .await
            .allowed
    );
    let key = backend.redis_key("p", "someone", Algorithm::Gcra);
    let ttl: i64 = server.cmd(&["PTTL", &key]);
    assert!(
        ttl > 0 && ttl <= 6_002,
        "expires when the quota is whole again: {ttl}"
    );
}

#[tokio::test]
async fn a_gcra_key_far_from_its_limit_lives_a_second_not_a_millisecond() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    let quota = Quota::per_second(1_000_000);
    assert!(decide(&backend, "busy", &quota).await.allowed);
    let key = backend.redis_key("p", "busy", Algorithm::Gcra);
    let ttl: i64 = server.cmd(&["PTTL", &key]);
    assert!(
        (900..=1_000).contains(&ttl),
        "kept for a second, not re-made on every request: {ttl}"
    );
}

#[tokio::test]
async fn a_gcra_tat_is_read_and_written_as_plain_decimal_microseconds() {
    // The stored state is what every version of the script reads and writes: a fleet
    // upgrading instance by instance shares it. Here a TAT written as the earlier script wrote
    // it (decimal µs, a multiple of 10^8: the digits Redis ≥ 7.2 would put in exponent form
    // were the number passed as is) is decided from, and the new one is plain digits again.
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    let quota = Quota::per_hour(10); // emission interval 360 s, tolerance 3,600 s
    let t = 360_000_000u64;
    let key = backend.redis_key("p", "upgraded", Algorithm::Gcra);
    let time: Vec<u64> = server.cmd(&["TIME"]);
    let now = time[0] * 1_000_000 + time[1];
    // Three to a little over three and a half intervals ahead of now.
    let stored = (now + 3 * t).div_ceil(100_000_000) * 100_000_000 + 100_000_000;
    let _: () = server.cmd(&["SET", &key, &stored.to_string(), "PX", "3600000"]);
    let d = match backend.decide("p", "upgraded", &Plan::new("p", quota), 5, Duration::ZERO) {
        Decide::Pending(f) => f.await.unwrap().decisions()[0],
        Decide::Ready(r) => r.unwrap().decisions()[0],
    };
    // After five more intervals the TAT is 8.3–8.6 intervals ahead: one of ten left.
    assert!(d.allowed);
    assert_eq!(d.remaining, 1, "{d:?}");
    let written: String = server.cmd(&["GET", &key]);
    assert_eq!(written, (stored + 5 * t).to_string());
    // It lives until the quota is whole again, as before.
    let ahead_ms = ((stored + 5 * t - now) / 1000) as i64;
    let ttl: i64 = server.cmd(&["PTTL", &key]);
    assert!(
        ttl > ahead_ms - 60_000 && ttl <= ahead_ms + 2,
        "{ttl} vs {ahead_ms}"
    );
}

#[tokio::test]
async fn hostile_keys_stay_in_their_namespace() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    let quota = Quota::per_minute(10);
    let long = "x".repeat(64 * 1024);
    for key in ["}{evil}", "a:b:*", "line\nbreak\0nul", "", long.as_str()] {
        assert!(decide(&backend, key, &quota).await.allowed);
    }
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert_eq!(keys.len(), 5);
    for k in keys {
        assert!(
            k.starts_with("turret:rl:{p/") || k.starts_with("turret:rl:{#"),
            "{k}"
        );
        assert!(k.ends_with("}:gcra"), "{k}");
        assert_eq!(k.matches('{').count(), 1, "{k}");
        assert!(k.len() < 100, "long keys are hashed: {}", k.len());
    }
}

/// How many times Redis ran `EVALSHA` or `EVAL`.
fn script_calls(server: &RedisServer) -> u64 {
    let stats: String = server.cmd(&["INFO", "commandstats"]);
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn a_hot_keys_concurrent_decisions_go_in_one_call_and_stay_exact() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    backend.preload().await.unwrap();
    for alg in ALGORITHMS {
        let quota = Quota::per_hour(100).with_algorithm(alg);
        let key = format!("hot-{alg:?}");
        let before = script_calls(&server);
        // The first request's call is on its way when the other 128 arrive: they wait for
        // it and go together in the next call.
        let pending = ask(&backend, &key, &quota, 129);
        let decisions: Vec<_> = futures_join(pending).await;
        assert_eq!(
            script_calls(&server) - before,
            2,
            "{alg:?}: one call for the first, one for the 128 queued behind it"
        );
        let allowed: Vec<u32> = decisions
            .iter()
            .filter(|d| d.allowed)
            .map(|d| d.remaining)
            .collect();
        assert_eq!(allowed.len(), 100, "{alg:?}: exactly the quota");
        // In arrival order, as if one by one: remaining counts down 99 … 0.
        assert_eq!(allowed, (0..100).rev().collect::<Vec<u32>>(), "{alg:?}");
        let refused = &decisions[100..];
        assert!(
            refused
                .iter()
                .all(|d| !d.allowed && d.retry_after.is_some()),
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn requests_queued_behind_a_cancelled_first_request_are_still_decided() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    let quota = Quota::per_hour(100);
    let Decide::Pending(first) =
        backend.decide("p", "k", &Plan::new("p", quota), 1, Duration::ZERO)
    else {
        panic!("Redis decisions are pending");
    };
    let queued = ask(&backend, "k", &quota, 5);
    // The first request's client went away before its call was made.
    drop(first);
    let decisions = tokio::time::timeout(Duration::from_secs(10), futures_join(queued))
        .await
        .expect("the queued requests are answered");
    let remaining: Vec<u32> = decisions.iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, vec![99, 98, 97, 96, 95]);
    // And the key is free again: the next request is decided too.
    assert_eq!(decide(&backend, "k", &quota).await.remaining, 94);
}

#[tokio::test]
async fn max_batch_one_makes_one_call_per_decision() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await).max_batch(1);
    backend.preload().await.unwrap();
    let quota = Quota::per_hour(100);
    let before = script_calls(&server);
    let pending = ask(&backend, "k", &quota, 20);
    let decisions = futures_join(pending).await;
    assert_eq!(script_calls(&server) - before, 20);
    assert!(decisions.iter().all(|d| d.allowed));
}

#[tokio::test]
async fn requests_queued_behind_a_failing_call_get_its_error() {
    let mut server = RedisServer::start();
    let backend = RedisBackend::new(redis(&server.url()).await);
    backend.preload().await.unwrap();
    server.stop();
    let quota = Quota::per_hour(100);
    let pending = ask(&backend, "k", &quota, 50);
    let mut errors = 0;
    for f in pending {
        if f.await.is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 50, "every request answered, each with an error");
    // Nothing stays queued: a later decision makes a call of its own (and fails too).
    let Decide::Pending(later) =
        backend.decide("p", "k", &Plan::new("p", quota), 1, Duration::ZERO)
    else {
        panic!("Redis decisions are pending");
    };
    assert!(later.await.is_err());
}

/// `n` decisions of `key` asked for at once: the futures, not yet awaited.
fn ask(
    backend: &RedisBackend,
    key: &str,
    quota: &Quota,
    n: usize,
) -> Vec<turret_ratelimit::DecisionFuture> {
    (0..n)
        .map(
            |_| match backend.decide("p", key, &Plan::new("p", *quota), 1, Duration::ZERO) {
                Decide::Pending(f) => f,
                Decide::Ready(_) => panic!("Redis decisions are pending"),
            },
        )
        .collect()
}

/// Awaits every decision, in order.
async fn futures_join(
    pending: Vec<turret_ratelimit::DecisionFuture>,
) -> Vec<turret_ratelimit::Decision> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in pending.into_iter().enumerate() {
        tasks.spawn(async move { (i, f.await.unwrap().decisions()[0]) });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, d)| d).collect()
}

/// `instances` layers, each with its own Redis connection, share one quota: `total`
/// concurrent requests from one client pass exactly `quota.count()` times.
async fn fleet_admits_exactly_the_quota(url: &str, quota: Quota) {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let layer = RateLimitLayer::new(quota).backend(RedisBackend::new(redis(url).await));
        fleet.push(service(layer, hits.clone()));
    }
    let total = 2000;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let svc = fleet[i % fleet.len()].clone();
        tasks.spawn(async move { svc.oneshot(get("203.0.113.50")).await.unwrap().status() });
    }
    let mut ok = 0;
    let mut limited = 0;
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, quota.count() as usize, "{quota:?}");
    assert_eq!(limited, total - ok);
    assert_eq!(hits.load(Ordering::Relaxed), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_share_one_quota_on_one_node() {
    let server = RedisServer::start();
    fleet_admits_exactly_the_quota(&server.url(), Quota::per_hour(100)).await;
    fleet_admits_exactly_the_quota(
        &server.url(),
        Quota::per_hour(150).with_algorithm(Algorithm::FixedWindow),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_share_one_quota_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    fleet_admits_exactly_the_quota(&cluster.url(), Quota::per_hour(100)).await;
    fleet_admits_exactly_the_quota(
        &cluster.url(),
        Quota::per_hour(120).with_algorithm(Algorithm::SlidingLog),
    )
    .await;
}

#[tokio::test]
async fn a_refused_client_is_refused_locally_until_its_retry_time() {
    let mut server = RedisServer::start();
    let layer = RateLimitLayer::new(Quota::per_hour(1))
        .backend(RedisBackend::new(redis(&server.url()).await));
    let svc = service(layer, Arc::default());
    assert_eq!(status(&svc, "192.0.2.1").await, StatusCode::OK);
    assert_eq!(
        status(&svc, "192.0.2.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Redis is gone, yet the offender is still refused (fail-open would have let it pass).
    server.stop();
    let res = svc.clone().oneshot(get("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
}

async fn redis_down_layer(server: &RedisServer, mode: FailureMode, fallback: bool) -> Svc {
    let cfg = config(&server.url())
        .command_timeout(Duration::from_millis(200))
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_millis(300),
        });
    let mut layer = RateLimitLayer::new(Quota::per_hour(3))
        .backend(RedisBackend::new(Redis::connect(cfg).await.unwrap()))
        .failure_mode(mode);
    if fallback {
        layer = layer.fallback_to_memory();
    }
    service(layer, Arc::default())
}

#[tokio::test]
async fn redis_stopped_fail_open_passes_fail_closed_refuses_both_fast_then_limits_again() {
    let mut server = RedisServer::start();
    let open = redis_down_layer(&server, FailureMode::Open, false).await;
    let closed = redis_down_layer(&server, FailureMode::Closed, false).await;
    for svc in [&open, &closed] {
        assert_eq!(status(svc, "192.0.2.7").await, StatusCode::OK);
    }
    server.stop();
    // Until the breaker opens each request may wait for the command timeout; afterwards
    // 100 requests together cost far less than one timeout each.
    for _ in 0..3 {
        open.clone().oneshot(get("192.0.2.7")).await.unwrap();
        closed.clone().oneshot(get("192.0.2.7")).await.unwrap();
    }
    let start = Instant::now();
    for i in 0..100 {
        let ip = format!("198.51.100.{i}");
        assert_eq!(status(&open, &ip).await, StatusCode::OK);
        assert_eq!(status(&closed, &ip).await, StatusCode::SERVICE_UNAVAILABLE);
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(200),
        "200 requests with Redis down took {elapsed:?}"
    );
    // A gRPC client gets a gRPC status, not a bare 503.
    let mut grpc = get("192.0.2.70");
    grpc.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let res = closed.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14", "UNAVAILABLE");

    server.restart();
    // After restart (and a breaker cool-down) the quota is enforced again: the fresh server
    // is empty, so a client gets 3 requests and then 429s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut statuses = Vec::new();
    while Instant::now() < deadline {
        statuses.clear();
        for _ in 0..4 {
            statuses.push(status(&open, "192.0.2.99").await);
        }
        if statuses.contains(&StatusCode::TOO_MANY_REQUESTS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "limiting resumed: {statuses:?}"
    );
}

#[tokio::test]
async fn redis_stopped_with_fallback_limits_locally() {
    let mut server = RedisServer::start();
    let svc = redis_down_layer(&server, FailureMode::Open, true).await;
    server.stop();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(status(&svc, "192.0.2.8").await);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 3, "{statuses:?}");
}

fn acquire(b: &turret_ratelimit::RedisConcurrency) -> turret_ratelimit::AcquireFuture {
    use turret_ratelimit::ConcurrencyBackend;
    match b.acquire("p", "ghost", 1) {
        turret_ratelimit::Acquire::Pending(f) => f,
        turret_ratelimit::Acquire::Ready(_) => unreachable!("redis decides asynchronously"),
    }
}

/// Two instances on one Redis, at most one request per client in flight, leases of
/// `lease`; a request whose `x-hold` header is set waits in the handler until `gate` gives
/// it a permit, after telling `entered`.
fn held_concurrency_fleet(
    redis: [Redis; 2],
    lease: Duration,
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<tokio::sync::Notify>,
) -> Vec<BoxCloneService<Request<String>, Response<turret_ratelimit::PermitBody<String>>, Infallible>>
{
    use turret_ratelimit::{ConcurrencyLimitLayer, RedisConcurrency};
    redis
        .into_iter()
        .map(|redis| {
            let (gate, entered) = (gate.clone(), entered.clone());
            BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(
                        ConcurrencyLimitLayer::new("exports", 1)
                            .backend(RedisConcurrency::new(redis).lease(lease)),
                    )
                    .service(service_fn(move |req: Request<String>| {
                        let (gate, entered) = (gate.clone(), entered.clone());
                        async move {
                            if req.headers().contains_key("x-hold") {
                                entered.notify_one();
                                let _permit = gate.acquire().await.unwrap();
                            }
                            Ok::<_, Infallible>(Response::new(String::from("ok")))
                        }
                    })),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outliving_its_lease_keeps_its_slot_fleet_wide() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let redis = [redis(&server.url()).await, redis(&server.url()).await];
    let fleet = held_concurrency_fleet(redis, lease, gate.clone(), entered.clone());
    let mut held = get("192.0.2.40");
    held.headers_mut().insert("x-hold", "1".parse().unwrap());
    let running = tokio::spawn(fleet[0].clone().oneshot(held));
    entered.notified().await;
    // Redis' clock decides when a lease ends, so real time passes here: four lease times,
    // long past the lease the request started with.
    for _ in 0..4 {
        tokio::time::sleep(lease).await;
        let other = fleet[1].clone().oneshot(get("192.0.2.40")).await.unwrap();
        assert_eq!(
            other.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "the running request's slot was freed"
        );
    }
    // Another client is not held up by it.
    let stranger = fleet[1].clone().oneshot(get("192.0.2.41")).await.unwrap();
    assert_eq!(stranger.status(), StatusCode::OK);
    gate.add_permits(1);
    assert_eq!(running.await.unwrap().unwrap().status(), StatusCode::OK);
    // Released (the release is sent in the background): the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = fleet[1].clone().oneshot(get("192.0.2.40")).await.unwrap();
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_leases_are_shared_by_the_fleet_and_expire() {
    use turret_ratelimit::{ConcurrencyLimitLayer, RedisConcurrency};

    let server = RedisServer::start();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let backend = RedisConcurrency::new(redis(&server.url()).await);
        let gate = gate.clone();
        fleet.push(BoxCloneService::new(
            ServiceBuilder::new()
                .layer(ConcurrencyLimitLayer::new("exports", 3).backend(backend))
                .service(service_fn(move |_: Request<String>| {
                    let gate = gate.clone();
                    async move {
                        let _permit = gate.acquire().await.unwrap();
                        Ok::<_, Infallible>(Response::new(String::from("ok")))
                    }
                })),
        ));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let svc = fleet[i % 4].clone();
        tasks.spawn(async move { svc.oneshot(get("192.0.2.30")).await.unwrap().status() });
    }
    // 17 are refused while 3 hold their slots.
    let mut refused = 0;
    while refused < 17 {
        let status = tasks.join_next().await.unwrap().unwrap();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        refused += 1;
    }
    gate.add_permits(3);
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }

    // A lease whose instance died holding it (its runtime gone: no release, no extension)
    // expires by itself.
    let url = server.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let backend =
                RedisConcurrency::new(redis(&url).await).lease(Duration::from_millis(200));
            let permit = acquire(&backend).await.unwrap().expect("first slot");
            std::mem::forget(permit);
        });
        // Dropping the runtime ends the instance's tasks, its lease extension among them.
    })
    .join()
    .unwrap();
    let backend =
        RedisConcurrency::new(redis(&server.url()).await).lease(Duration::from_millis(200));
    assert!(acquire(&backend).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        acquire(&backend).await.unwrap().is_some(),
        "the dead holder's lease expired"
    );
}

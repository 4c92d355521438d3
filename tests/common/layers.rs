//! Each layer as the fault scenarios drive it: two instances (A, loaded; B, its fleet peer),
//! each with its own Redis handle, over a `service_fn` origin; a load of request numbers;
//! and a check that the layer does its normal, Redis-backed, fleet-wide job.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tower::{Layer as _, ServiceExt, service_fn, util::BoxCloneSyncService};
use turret::{
    cache::{RedisStorage, ResponseCacheLayer, TieredStorage},
    conditional::{ConditionalLayer, ValidatorStore},
    ratelimit::{
        ConcurrencyLimitLayer, FailureMode, Policy, Quota, RateLimitLayer, RedisBackend,
        RedisConcurrency,
    },
    redis::Redis,
    stampede::{LeaseLock, StampedeCache},
};

use super::{Layer, Outcome, Svc, connect, sender};

/// The rate limiter's quota for ordinary clients.
pub const QUOTA: u32 = 5;
/// The client of the hot key (its own policy, never limited by the load).
pub const HOT_IP: &str = "192.0.2.1";

fn ok(o: Outcome) -> bool {
    o == Outcome::Status(200)
}

fn ok_or_412(o: Outcome) -> bool {
    matches!(o, Outcome::Status(200 | 412))
}

fn unavailable(o: Outcome) -> bool {
    o == Outcome::Status(503)
}

/// A request from `ip` to `path`, with the peer address the limiter keys on.
pub fn from_ip(ip: &str, path: &str) -> Request<()> {
    let mut req = Request::get(path)
        .header(header::HOST, "shop.example")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(format!("{ip}:40000").parse::<SocketAddr>().unwrap());
    req
}

/// A distinct IPv4 address per number (10.0.0.0/8 for the load, 198.18.0.0/15 for checks).
pub fn ip(base: u8, n: u64) -> String {
    format!("{base}.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// A plain origin: 200, `max-age=60`, a short body.
fn origin(
    req: Request<()>,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static {
    let body = format!("origin {}", req.uri().path());
    async move {
        let mut res = Response::new(Full::from(body));
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        Ok(res)
    }
}

/// The rate limiter: `default` policy (5 an hour per client) and a `hot` policy on `/hot`
/// (a billion an hour), so that the load's hot client has one key and is never limited.
pub type LimiterSvc = Svc<turret::ratelimit::ResponseBody<Full<Bytes>>>;

pub fn limiter_service(redis: Redis, mode: FailureMode, fallback: bool) -> LimiterSvc {
    let mut layer = RateLimitLayer::new(Quota::per_hour(QUOTA))
        .policy(Policy::new("hot", Quota::per_hour(1_000_000_000)).path("/hot"))
        .backend(RedisBackend::new(redis))
        .failure_mode(mode);
    if fallback {
        layer = layer.fallback_to_memory();
    }
    BoxCloneSyncService::new(layer.layer(service_fn(origin)))
}

/// The Redis key of the load's hot client.
pub fn limiter_hot_key(redis: &Redis) -> String {
    RedisBackend::new(redis.clone()).redis_key("hot", HOT_IP, turret::ratelimit::Algorithm::Gcra)
}

pub async fn limiter(url: &str, mode: FailureMode, fallback: bool) -> Layer {
    let (ra, rb) = (connect(url).await, connect(url).await);
    let a = limiter_service(ra.clone(), mode, fallback);
    let b = limiter_service(rb, mode, fallback);
    let name = match (mode, fallback) {
        (_, true) => "rate limiter (memory fallback)",
        (FailureMode::Open, false) => "rate limiter (fail open)",
        (FailureMode::Closed, false) => "rate limiter (fail closed)",
    };
    let send = sender(a.clone(), |i| {
        if i % 2 == 0 {
            from_ip(HOT_IP, "/hot")
        } else {
            from_ip(&ip(10, i), "/")
        }
    });
    Layer {
        name,
        redis: ra,
        send,
        healthy: ok,
        degraded: if mode == FailureMode::Closed && !fallback {
            unavailable
        } else {
            ok
        },
        // Fleet-wide limiting: a fresh client sending 3 requests through each instance gets
        // exactly the quota admitted (each instance limiting on its own would admit 6).
        normal: Arc::new(move |n| {
            let (a, b) = (a.clone(), b.clone());
            Box::pin(async move { limits_fleet_wide(&a, &b, &ip(198, n)).await })
        }),
    }
}

/// Whether `client` gets exactly [`QUOTA`] requests through `a` and `b` together.
pub async fn limits_fleet_wide(a: &LimiterSvc, b: &LimiterSvc, client: &str) -> bool {
    let mut statuses = Vec::new();
    for svc in [a, a, a, b, b, b] {
        statuses.push(super::outcome(svc, from_ip(client, "/")).await);
    }
    let admitted = statuses
        .iter()
        .filter(|o| **o == Outcome::Status(200))
        .count();
    let limited = statuses
        .iter()
        .filter(|o| **o == Outcome::Status(429))
        .count();
    admitted == QUOTA as usize && limited == 6 - QUOTA as usize
}

/// A request marked so that the concurrency fault layer's origin holds it: it tells
/// `entered`, then waits for a permit of `gate`.
#[derive(Clone)]
pub struct Hold {
    pub gate: Arc<tokio::sync::Semaphore>,
    pub entered: Arc<tokio::sync::Notify>,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            entered: Arc::default(),
        }
    }
}

/// The concurrency limiter's origin: 200 at once, or held (see [`Hold`]).
fn holding_origin(
    req: Request<()>,
) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static {
    let hold = req.extensions().get::<Hold>().cloned();
    async move {
        if let Some(hold) = hold {
            hold.entered.notify_one();
            let _ = hold.gate.acquire().await;
        }
        Ok(Response::new(Full::from("done")))
    }
}

pub type ConcurrencySvc = Svc<turret::ratelimit::PermitBody<Full<Bytes>>>;

/// At most one request per client in flight, fleet-wide on Redis, leases of `lease`.
pub fn concurrency_service(redis: Redis, mode: FailureMode, lease: Duration) -> ConcurrencySvc {
    let layer = ConcurrencyLimitLayer::new("exports", 1)
        .backend(RedisConcurrency::new(redis).lease(lease))
        .failure_mode(mode);
    BoxCloneSyncService::new(layer.layer(service_fn(holding_origin)))
}

/// The concurrency limiter (`ConcurrencyLimitLayer`, one request per client in flight, leases
/// on Redis). The load: a fresh client per request, answered at once.
pub async fn concurrency(url: &str, mode: FailureMode) -> Layer {
    let (ra, rb) = (connect(url).await, connect(url).await);
    let lease = Duration::from_secs(2);
    let a = concurrency_service(ra.clone(), mode, lease);
    let b = concurrency_service(rb, mode, lease);
    let send = sender(a.clone(), |i| from_ip(&ip(10, i), "/"));
    Layer {
        name: match mode {
            FailureMode::Open => "concurrency limit (fail open)",
            FailureMode::Closed => "concurrency limit (fail closed)",
        },
        redis: ra,
        send,
        healthy: ok,
        degraded: if mode == FailureMode::Closed {
            unavailable
        } else {
            ok
        },
        normal: Arc::new(move |n| {
            let (a, b) = (a.clone(), b.clone());
            Box::pin(async move { limits_in_flight_fleet_wide(&a, &b, &ip(198, n)).await })
        }),
    }
}

/// Whether a request of `client` held in `a` makes `b` refuse the same client (one in flight
/// fleet-wide), and the held one then completes.
pub async fn limits_in_flight_fleet_wide(
    a: &ConcurrencySvc,
    b: &ConcurrencySvc,
    client: &str,
) -> bool {
    let hold = Hold::default();
    let mut req = from_ip(client, "/");
    req.extensions_mut().insert(hold.clone());
    let a = a.clone();
    let mut running = tokio::spawn(async move { super::outcome(&a, req).await });
    let entered = tokio::select! {
        _ = hold.entered.notified() => true,
        // Refused (or failed) before the handler.
        _ = &mut running => false,
    };
    if !entered {
        return false;
    }
    let other = super::outcome(b, from_ip(client, "/")).await;
    hold.gate.add_permits(1);
    let held = running.await.unwrap_or(Outcome::Err);
    other == Outcome::Status(429) && held == Outcome::Status(200)
}

pub type CacheSvc = Svc<turret::cache::ResponseBody<Full<Bytes>>>;

/// How long a miss waits for another instance's fill in these tests.
pub const LEASE_WAIT: Duration = Duration::from_secs(2);

pub fn cache_service(redis: Redis, tiered: bool) -> (ResponseCacheLayer, CacheSvc) {
    let layer = if tiered {
        ResponseCacheLayer::with_storage(TieredStorage::new(redis.clone()))
    } else {
        ResponseCacheLayer::with_storage(RedisStorage::new(redis.clone()))
    }
    .fill_lease(LeaseLock::redis(redis), LEASE_WAIT);
    let svc = BoxCloneSyncService::new(layer.layer(service_fn(origin)));
    (layer, svc)
}

pub fn get(path: &str) -> Request<()> {
    Request::get(path)
        .header(header::HOST, "shop.example")
        .body(())
        .unwrap()
}

/// The response cache (Redis or two-tier storage, fleet fill lease). The load: one hot path
/// and a miss on a fresh path, in turn.
pub async fn cache(url: &str, tiered: bool, hot: &str) -> Layer {
    let (ra, rb) = (connect(url).await, connect(url).await);
    let (_, a) = cache_service(ra.clone(), tiered);
    let (_, b) = cache_service(rb, tiered);
    let hot = format!("/{hot}");
    let send = sender(a.clone(), move |i| {
        if i % 2 == 0 {
            get(&hot)
        } else {
            get(&format!("/u/{i}"))
        }
    });
    Layer {
        name: if tiered {
            "response cache (tiered storage)"
        } else {
            "response cache (redis storage)"
        },
        redis: ra,
        send,
        healthy: ok,
        degraded: ok,
        // Shared storage: what A fills, B serves as a hit (from Redis: B's own L1 never saw it).
        normal: Arc::new(move |n| {
            let (a, b) = (a.clone(), b.clone());
            Box::pin(async move { shares_fills(&a, &b, &format!("/check/{n}")).await })
        }),
    }
}

/// Whether a miss filled through `a` is a hit through `b`.
pub async fn shares_fills(a: &CacheSvc, b: &CacheSvc, path: &str) -> bool {
    let Ok(Ok(res)) =
        tokio::time::timeout(super::REQUEST_DEADLINE, a.clone().oneshot(get(path))).await
    else {
        return false;
    };
    if res.status() != StatusCode::OK {
        return false;
    }
    match tokio::time::timeout(super::REQUEST_DEADLINE, b.clone().oneshot(get(path))).await {
        Ok(Ok(res)) => res.headers().get("x-cache").is_some_and(|v| v == "HIT"),
        _ => false,
    }
}

pub type CondSvc = Svc<turret::conditional::ResponseBody<Full<Bytes>>>;

/// The application behind the conditional layer: a version per path; GET answers it as
/// `ETag: "vN"`, PUT bumps it.
#[derive(Clone, Default)]
pub struct Versions(Arc<Mutex<HashMap<String, u64>>>);

impl Versions {
    pub fn service(
        &self,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let versions = self.clone();
        service_fn(move |req: Request<()>| {
            let v = {
                let mut map = versions.0.lock().unwrap();
                let v = map.entry(req.uri().path().to_owned()).or_insert(1);
                if req.method() == Method::PUT {
                    *v += 1;
                }
                *v
            };
            async move {
                let mut res = Response::new(Full::from(format!("version {v}")));
                res.headers_mut().insert(
                    header::ETAG,
                    HeaderValue::from_str(&format!("\"v{v}\"")).unwrap(),
                );
                Ok(res)
            }
        })
    }
}

pub fn conditional_service(redis: Redis, versions: &Versions) -> CondSvc {
    BoxCloneSyncService::new(
        ConditionalLayer::new()
            .validator_store(ValidatorStore::redis(redis))
            .layer(versions.service()),
    )
}

pub fn put(path: &str, field: http::HeaderName, value: &str) -> Request<()> {
    Request::put(path)
        .header(header::HOST, "shop.example")
        .header(field, value)
        .body(())
        .unwrap()
}

/// The conditional layer with a Redis validator store. The load: GETs (recorded), writes
/// with a maybe-stale `If-Match` on the hot path, creates with `If-None-Match: *`.
pub async fn conditional(url: &str, hot: &str) -> Layer {
    let (ra, rb) = (connect(url).await, connect(url).await);
    let versions = Versions::default();
    let a = conditional_service(ra.clone(), &versions);
    let b = conditional_service(rb, &versions);
    let hot = format!("/{hot}");
    let send = sender(a.clone(), move |i| match i % 3 {
        0 => get(&hot),
        1 => put(&hot, header::IF_MATCH, "\"v2\""),
        _ => put(&format!("/new/{i}"), header::IF_NONE_MATCH, "*"),
    });
    Layer {
        name: "conditional (redis validator store)",
        redis: ra,
        send,
        healthy: ok_or_412,
        degraded: ok_or_412,
        // The store decides writes: an `If-Match` it cannot confirm is refused before the
        // handler (failing open would let it through).
        normal: Arc::new(move |n| {
            let (a, b) = (a.clone(), b.clone());
            Box::pin(async move {
                let path = format!("/check/{n}");
                let mut refused = true;
                for svc in [&a, &b] {
                    let o = super::outcome(svc, put(&path, header::IF_MATCH, "\"bogus\"")).await;
                    refused &= o == Outcome::Status(412);
                }
                refused
            })
        }),
    }
}

pub type Stampede = StampedeCache;

/// `get_or_compute` as an HTTP handler: the value of the key named by the path.
pub fn stampede_service(cache: Stampede) -> Svc<Full<Bytes>> {
    BoxCloneSyncService::new(service_fn(move |req: Request<()>| {
        let cache = cache.clone();
        async move {
            let key = req.uri().path().trim_start_matches('/').to_owned();
            let value = key.clone();
            let res = cache
                .get_or_compute(&key, Duration::from_secs(60), move || async move {
                    Ok::<_, Infallible>(value)
                })
                .await;
            let out = match res {
                Ok(v) => Response::new(Full::from(v)),
                Err(_) => {
                    let mut out = Response::new(Full::default());
                    *out.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    out
                }
            };
            Ok::<_, Infallible>(out)
        }
    }))
}

pub fn stampede_cache(redis: Redis) -> Stampede {
    StampedeCache::redis(redis).lock_wait(LEASE_WAIT)
}

/// `StampedeCache` on Redis (values and leases). The load: a hot key and a fresh key, in turn.
pub async fn stampede(url: &str, hot: &str) -> Layer {
    let (ra, rb) = (connect(url).await, connect(url).await);
    let a = stampede_cache(ra.clone());
    let b = stampede_cache(rb);
    let hot = format!("/{hot}");
    let send = sender(stampede_service(a.clone()), move |i| {
        if i % 2 == 0 {
            get(&hot)
        } else {
            get(&format!("/u{i}"))
        }
    });
    Layer {
        name: "stampede cache (redis store and lease)",
        redis: ra,
        send,
        healthy: ok,
        degraded: ok,
        // Fleet-wide: what A computed and stored, B reads instead of computing.
        normal: Arc::new(move |n| {
            let (a, b) = (a.clone(), b.clone());
            Box::pin(async move { shares_values(&a, &b, &format!("check{n}")).await })
        }),
    }
}

/// Whether `b` reads the value `a` computed for `key`.
pub async fn shares_values(a: &Stampede, b: &Stampede, key: &str) -> bool {
    let ttl = Duration::from_secs(60);
    let from_a = a
        .get_or_compute(key, ttl, || async {
            Ok::<_, Infallible>(String::from("A"))
        })
        .await;
    let from_b = b
        .get_or_compute(key, ttl, || async {
            Ok::<_, Infallible>(String::from("B"))
        })
        .await;
    matches!((from_a.as_deref(), from_b.as_deref()), (Ok("A"), Ok("A")))
}

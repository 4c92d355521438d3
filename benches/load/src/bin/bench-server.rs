//! One benchmark scenario as an HTTP server on loopback: `bench-server <scenario> <port>
//! [redis-url]`. Serves `GET /items/{id}` (about 1 KB of JSON, 1,000 ids, sent with
//! `Cache-Control: max-age=3600` in every scenario) behind the scenario's middleware, with
//! quotas no load can reach so every request is admitted.
//!
//! A scenario name may end in `-<n>ms` (`raw-2ms`, `turret-cache-redis-2ms`): the origin
//! handler then sleeps that long before answering, as if it did real work.
//!
//! `GET /__origin_calls` (outside every middleware) answers how many times the origin
//! handler ran since the process started.
//!
//! The `views-…` scenarios serve writes instead (`POST /views/{id}` on a SQLite database,
//! directly or through write-behind; see `views.rs`); their origin counter counts the
//! accepted writes.

#[path = "../views.rs"]
mod views;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    BoxError, Router,
    error_handling::HandleErrorLayer,
    extract::{Path, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http::{StatusCode, header};
use tower::ServiceBuilder;
use turret_cache::{DEFAULT_LEASE_WAIT, RedisStorage, ResponseCacheLayer, TieredStorage};
use turret_ratelimit::{Algorithm, HeaderMode, Plan, Policy, Quota, RateLimitLayer, RedisBackend};
use turret_redis::{Redis, RedisConfig};
use turret_stampede::LeaseLock;

const HUGE: u32 = 1_000_000_000;

/// The rate of `turret-redis-delay` (the driver compares the served rate with it).
const DELAY_RATE: u32 = 2000;

/// The origin's freshness, sent on every response: one hour.
const CACHE_CONTROL: &str = "max-age=3600";

/// The origin: the bodies, the simulated work, and a count of its calls.
#[derive(Clone)]
struct Origin {
    items: Arc<Vec<Bytes>>,
    delay: Duration,
    calls: Arc<AtomicU64>,
}

fn items() -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..1000)
            .map(|id| {
                let tags: Vec<String> = (0..12).map(|t| format!("\"tag-{id}-{t}\"")).collect();
                Bytes::from(format!(
                    "{{\"id\":{id},\"name\":\"Product {id}\",\"category\":\"category-{}\",\"price\":{}.99,\
                     \"stock\":{},\"description\":\"{}\",\"tags\":[{}]}}",
                    id % 20,
                    id % 500,
                    id * 7 % 1000,
                    "A very fine product. ".repeat(25),
                    tags.join(",")
                ))
            })
            .collect(),
    )
}

/// The handler, the same in every scenario.
async fn item(State(origin): State<Origin>, Path(id): Path<usize>) -> Response {
    origin.calls.fetch_add(1, Ordering::Relaxed);
    if !origin.delay.is_zero() {
        tokio::time::sleep(origin.delay).await;
    }
    match origin.items.get(id) {
        Some(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, CACHE_CONTROL),
            ],
            body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The three fields a turret-cache hit adds (`Age`, `X-Cache`, `Cache-Status`), as constants
/// on the origin's responses: what carrying them costs without any cache.
async fn add_cache_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::AGE, http::HeaderValue::from_static("0"));
    h.insert("x-cache", http::HeaderValue::from_static("HIT"));
    h.insert(
        "cache-status",
        http::HeaderValue::from_static("turret; hit; ttl=3599"),
    );
    res
}

/// The hand-written cache-aside users write today around redis-rs: `GET` the body; on a miss
/// call the handler and `SET … EX 3600` its body; one multiplexed connection manager.
async fn cache_aside(
    State(conn): State<turret_redis::redis::aio::ConnectionManager>,
    req: Request,
    next: Next,
) -> Response {
    let key = format!("aside:{}", req.uri().path());
    let mut conn = conn.clone();
    let hit: Result<Option<Vec<u8>>, _> = turret_redis::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await;
    if let Ok(Some(body)) = hit {
        return (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, CACHE_CONTROL),
            ],
            Bytes::from(body),
        )
            .into_response();
    }
    let res = next.run(req).await;
    if res.status() != StatusCode::OK {
        return res;
    }
    let (parts, body) = res.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let _: Result<(), _> = turret_redis::redis::cmd("SET")
        .arg(&key)
        .arg(&body[..])
        .arg("EX")
        .arg(3600)
        .query_async(&mut conn)
        .await;
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// `raw-2ms` → (`raw`, 2 ms); `raw` → (`raw`, 0).
fn split_delay(scenario: &str) -> (&str, Duration) {
    if let Some((base, suffix)) = scenario.rsplit_once('-')
        && let Some(ms) = suffix.strip_suffix("ms")
        && let Ok(ms) = ms.parse::<u64>()
    {
        return (base, Duration::from_millis(ms));
    }
    (scenario, Duration::ZERO)
}

async fn redis_handle(url: &str) -> Redis {
    let config = RedisConfig::from_url(url)
        .expect("redis url")
        .command_timeout(Duration::from_secs(1));
    Redis::connect(config).await.expect("connect to redis")
}

/// The hand-written limiter users write today: `INCR` + `EXPIRE` in one pipeline, on a
/// plain redis-rs connection manager.
async fn incr_expire(
    State(conn): State<turret_redis::redis::aio::ConnectionManager>,
    req: Request,
    next: Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let key = format!("incr:{ip}");
    let mut conn = conn.clone();
    let (count,): (u64,) = match turret_redis::redis::pipe()
        .cmd("INCR")
        .arg(&key)
        .cmd("EXPIRE")
        .arg(&key)
        .arg(60)
        .arg("NX")
        .ignore()
        .query_async(&mut conn)
        .await
    {
        Ok(v) => v,
        Err(_) => return next.run(req).await,
    };
    if count > u64::from(HUGE) {
        return StatusCode::TOO_MANY_REQUESTS.into_response();
    }
    next.run(req).await
}

/// The same five fields the rate limiter adds, as constants: what carrying them costs
/// (encoding, bytes, the load generator parsing them) without any limiter.
async fn add_five_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        "ratelimit-policy",
        http::HeaderValue::from_static("\"default\";q=1000000000;w=1"),
    );
    h.insert(
        "ratelimit",
        http::HeaderValue::from_static("\"default\";r=999999999;t=1"),
    );
    h.insert(
        "x-ratelimit-limit",
        http::HeaderValue::from_static("1000000000"),
    );
    h.insert(
        "x-ratelimit-remaining",
        http::HeaderValue::from_static("999999999"),
    );
    h.insert("x-ratelimit-reset", http::HeaderValue::from_static("1"));
    res
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (scenario, delay) = split_delay(args.get(1).map(String::as_str).unwrap_or("raw"));
    let port: u16 = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(3000);
    let redis_url = args.get(3).cloned().unwrap_or_default();

    if let Some((app, accepted)) = views::app(scenario, &redis_url).await {
        return serve(app, accepted, port).await;
    }
    let calls = Arc::new(AtomicU64::new(0));
    let routes = Router::new()
        .route("/items/{id}", get(item))
        .with_state(Origin {
            items: items(),
            delay,
            calls: calls.clone(),
        });
    let app = match scenario {
        "raw" => routes,
        "raw-plus-5-headers" => routes.layer(middleware::map_response(add_five_headers)),
        "raw-plus-cache-headers" => routes.layer(middleware::map_response(add_cache_headers)),
        "turret-memory" => routes.layer(RateLimitLayer::new(Quota::per_second(HUGE))),
        "turret-memory-no-fields" => routes
            .layer(RateLimitLayer::new(Quota::per_second(HUGE)).header_mode(HeaderMode::Never)),
        "turret-conditional" => routes.layer(turret_conditional::ConditionalLayer::new()),
        "turret-redis-gcra" => routes.layer(
            RateLimitLayer::new(Quota::per_second(HUGE))
                .backend(RedisBackend::new(redis_handle(&redis_url).await)),
        ),
        // One key per item id (1,000 keys over 64 or 400 connections): few decisions of a
        // key overlap, so nearly every request makes its own call — the uncontended path.
        "turret-redis-gcra-many-keys" => routes.layer(
            RateLimitLayer::new(Quota::per_second(HUGE))
                .key(|req: &axum::extract::Request| Some(req.uri().path().to_owned()))
                .backend(RedisBackend::new(redis_handle(&redis_url).await)),
        ),
        // Two quotas in one script call (all-or-nothing): the same one round trip.
        "turret-redis-gcra-two-quotas" => routes.layer(
            RateLimitLayer::policies([Policy::with_plan(
                "default",
                Plan::new("default", Quota::per_second(HUGE))
                    .and("daily", Quota::per(Duration::from_secs(86_400), HUGE)),
            )])
            .backend(RedisBackend::new(redis_handle(&redis_url).await)),
        ),
        // Delay mode on Redis: every client is one key at DELAY_RATE a second, one at a
        // time; requests over the rate wait for their turn (up to 5 s) instead of a 429.
        "turret-redis-delay" => routes.layer(
            RateLimitLayer::policies([Policy::new(
                "default",
                Quota::per_second(DELAY_RATE).burst(1),
            )
            .delay(Duration::from_secs(5))
            .max_waiting(10_000)])
            .key(|_: &axum::extract::Request| Some(String::from("everyone")))
            .backend(RedisBackend::new(redis_handle(&redis_url).await)),
        ),
        "turret-redis-fixed" => routes.layer(
            RateLimitLayer::new(Quota::per_second(HUGE).with_algorithm(Algorithm::FixedWindow))
                .backend(RedisBackend::new(redis_handle(&redis_url).await)),
        ),
        "tower-governor" => {
            let config = tower_governor::governor::GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(HUGE)
                .finish()
                .expect("governor config");
            routes.layer(tower_governor::GovernorLayer::new(config))
        }
        "incr-expire" => {
            let client = turret_redis::redis::Client::open(redis_url.as_str()).expect("redis url");
            let conn = turret_redis::redis::aio::ConnectionManager::new(client)
                .await
                .expect("connect");
            routes.layer(middleware::from_fn_with_state(conn, incr_expire))
        }
        // Request coalescing without a cache: concurrent identical GETs share one origin
        // call (in this process).
        "turret-coalesce" => routes.layer(turret_stampede::CoalesceLayer::new()),
        "turret-cache-memory" => routes.layer(ResponseCacheLayer::new()),
        "turret-cache-redis" => routes.layer(ResponseCacheLayer::with_storage(RedisStorage::new(
            redis_handle(&redis_url).await,
        ))),
        "turret-cache-tiered" => routes.layer(ResponseCacheLayer::with_storage(
            TieredStorage::new(redis_handle(&redis_url).await),
        )),
        // Every layer with Redis: the rate limiter per client IP (GCRA on Redis, a hot key's
        // decisions batched, memory while Redis is down), the tiered response cache with the
        // fleet-wide fill lease, and ETags and 304 inside the cache, so that a body is
        // hashed once per fill rather than on every hit.
        "turret-full-stack" => {
            let redis = redis_handle(&redis_url).await;
            routes
                .layer(turret_conditional::ConditionalLayer::new())
                .layer(
                    ResponseCacheLayer::with_storage(TieredStorage::new(redis.clone()))
                        .fill_lease(LeaseLock::redis(redis.clone()), DEFAULT_LEASE_WAIT),
                )
                .layer(
                    RateLimitLayer::new(Quota::per_second(HUGE))
                        .backend(RedisBackend::new(redis))
                        .fallback_to_memory(),
                )
        }
        "http-cache-tower-server" => {
            // moka's default in http-cache holds 42 entries: room for all 1,000 here.
            let manager = http_cache::MokaManager::new(moka::future::Cache::new(10_000));
            routes.layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: BoxError| async {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }))
                    .layer(http_cache_tower_server::ServerCacheLayer::new(manager)),
            )
        }
        // `-plus-cache-headers`: the control for the Redis cache hit, the same cache-aside with
        // its responses carrying the three fields a turret-cache hit adds.
        "redis-cache-aside" | "redis-cache-aside-plus-cache-headers" => {
            let client = turret_redis::redis::Client::open(redis_url.as_str()).expect("redis url");
            let conn = turret_redis::redis::aio::ConnectionManager::new(client)
                .await
                .expect("connect");
            let aside = routes.layer(middleware::from_fn_with_state(conn, cache_aside));
            if scenario == "redis-cache-aside" {
                aside
            } else {
                aside.layer(middleware::map_response(add_cache_headers))
            }
        }
        other => {
            eprintln!("unknown scenario {other}");
            std::process::exit(2);
        }
    };
    serve(app, calls, port).await;
}

async fn serve(app: Router, calls: Arc<AtomicU64>, port: u16) {
    // Outside every middleware: the driver reads it before and after each measured run.
    let app = app.route(
        "/__origin_calls",
        get(move || async move { calls.load(Ordering::Relaxed).to_string() }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}

//! One benchmark scenario as an HTTP server on loopback: `bench-server <scenario> <port>
//! [redis-url]`. Serves `GET /items/{id}` (about 1 KB of JSON, 1,000 ids) behind the
//! scenario's middleware, with quotas no load can reach so every request is admitted.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http::{StatusCode, header};
use turret_ratelimit::{Algorithm, HeaderMode, Quota, RateLimitLayer, RedisBackend};
use turret_redis::{Redis, RedisConfig};

const HUGE: u32 = 1_000_000_000;

type Items = Arc<Vec<Bytes>>;

fn items() -> Items {
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

async fn item(State(items): State<Items>, Path(id): Path<usize>) -> Response {
    match items.get(id) {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
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
    let scenario = args.get(1).map(String::as_str).unwrap_or("raw");
    let port: u16 = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(3000);
    let redis_url = args.get(3).cloned().unwrap_or_default();

    let routes = Router::new()
        .route("/items/{id}", get(item))
        .with_state(items());
    let app = match scenario {
        "raw" => routes,
        "raw-plus-5-headers" => routes.layer(middleware::map_response(add_five_headers)),
        "turret-memory" => routes.layer(RateLimitLayer::new(Quota::per_second(HUGE))),
        "turret-memory-no-fields" => {
            routes.layer(RateLimitLayer::new(Quota::per_second(HUGE)).headers(HeaderMode::Never))
        }
        "turret-conditional" => routes.layer(turret_conditional::ConditionalLayer::new()),
        "turret-redis-gcra" => routes.layer(
            RateLimitLayer::new(Quota::per_second(HUGE))
                .backend(RedisBackend::new(redis_handle(&redis_url).await)),
        ),
        "turret-redis-fixed" => routes.layer(
            RateLimitLayer::new(Quota::per_second(HUGE).algorithm(Algorithm::FixedWindow))
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
        other => {
            eprintln!("unknown scenario {other}");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("ready");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}

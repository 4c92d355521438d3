//! turret: tower middleware for HTTP services over Redis — a response cache, a rate limiter,
//! ETags and conditional requests, stampede protection — in memory for one instance, on Redis
//! for a fleet.
//!
//! A product service behind every layer: 100 requests a minute per client (the address
//! before the proxies at 10.0.0.0/8), ETags with 304s and `If-Match` → 412, a response cache
//! that a `PUT` invalidates; in memory, or on Redis when `REDIS_URL` is set — the same types.
//! The whole app, on SQLite with a cached report, is `examples/quickstart`.
//!
#![cfg_attr(feature = "full", doc = "```no_run")]
#![cfg_attr(not(feature = "full"), doc = "```ignore")]
//! use std::{net::SocketAddr, time::Duration};
//!
//! use axum::{Json, Router, extract::Path, routing::get};
//! use turret::cache::{Policy, ResponseCacheLayer};
//! use turret::conditional::{ConditionalLayer, ValidatorStore};
//! use turret::ratelimit::{ClientIp, Quota, RateLimitLayer};
//! use turret::redis::{Redis, RedisConfig};
//!
//! async fn product(Path(id): Path<u32>) -> Json<String> {
//!     tokio::time::sleep(Duration::from_millis(20)).await; // the slow database
//!     Json(format!("product {id}"))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let redis = match std::env::var("REDIS_URL") {
//!         Ok(url) => Some(Redis::connect(RedisConfig::from_url(&url)?).await?),
//!         Err(_) => None, // memory: one instance
//!     };
//!     let validators = redis.clone().map_or_else(ValidatorStore::memory, ValidatorStore::redis);
//!     let products = Policy::new("products").ttl(Duration::from_secs(300));
//!     let app = Router::new()
//!         .route("/products/{id}", get(product))
//!         // Inside out: the response cache, ETags, and the rate limiter outermost.
//!         .layer(ResponseCacheLayer::new().backend_from(redis.clone()).route("/products/*", products))
//!         .layer(ConditionalLayer::new().validator_store(validators))
//!         .layer(RateLimitLayer::new(Quota::per_minute(100))
//!             .key(ClientIp::trusting(["10.0.0.0/8"])?)
//!             .backend_from(redis));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     // ClientIp reads the peer address from ConnectInfo (feature `axum`, in `full`).
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//!     Ok(())
//! }
//! ```
//!
//! The README has the [layer order](https://github.com/turret-rs/turret#layer-order) (what
//! goes outside what, and why), [per-route
//! stacks](https://github.com/turret-rs/turret#per-route-stacks) (`route_layer`,
//! `Router::nest`) and the way [from one instance to a
//! fleet](https://github.com/turret-rs/turret#from-one-instance-to-a-fleet).
//!
//! # Features
//!
//! Each layer lives in its own crate and is re-exported here, documentation included, behind
//! a feature of the same name. A layer's feature alone gives its memory backend and no Redis
//! dependency; `redis` adds the Redis backend of every layer turned on.
//!
//! | feature | module | what |
//! |---|---|---|
//! | `ratelimit` | [`ratelimit`] | rate limiting per key: GCRA, fixed and sliding windows, concurrency; memory, or Redis with `redis` |
//! | `conditional` | [`conditional`] | ETags and RFC 9110 preconditions: 304 on reads, 412 before a stale write reaches the handler, the new ETag on a write's answer; validator store in memory, or Redis with `redis` |
//! | `cache` | [`cache`] | RFC 9111 shared response cache: storage in memory, or Redis and two-tier with `redis`; revalidation, stale-while-revalidate, stale-if-error, one origin call per key (turns on `stampede`) |
//! | `stampede` | [`stampede`] | cache-aside (`StampedeCache::fetch`), single-flight, lease lock with fencing (fleet-wide with `redis`), XFetch, request coalescing |
//! | `cached` | [`cached`] | `#[cached]` on async fns: stampede-safe data caching, the key function generated next to the function (turns on `stampede`) |
//! | `writebehind` | [`writebehind`] | write-behind queue: writes merged per key and flushed in batches to your sink; bounded memory queue, or a Redis Stream shared by a fleet with `redis` |
//! | `redis` | [`redis`] | the shared Redis connection (one node or cluster, timeouts, circuit breaker, scripts, pub/sub), and the Redis parts of the layers turned on |
//! | `axum` | | with `ratelimit`: `PeerIp` / `ClientIp` read axum's `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info::<SocketAddr>()`). Without it, or without `ConnectInfo`, a request has no key: a `500` saying so, a log line naming this fix, the first one also on stderr when no `tracing` subscriber is set |
//! | `compression` | | with `cache` and `redis`: LZ4 for large bodies in Redis |
//! | `tls` | | `rediss://` for every Redis connection (turns on `redis`) |
//! | `full` | | every layer with `redis`, `axum`, `cached` and `writebehind` (not `tls`, `compression`) |
//!
//! The rendered documentation (docs.rs) is built with every feature; without a feature, its
//! module links here point to the crate's own documentation.
//!
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`redis`]: https://docs.rs/turret-redis"
)]
#![cfg_attr(
    not(feature = "ratelimit"),
    doc = "[`ratelimit`]: https://docs.rs/turret-ratelimit"
)]
#![cfg_attr(
    not(feature = "conditional"),
    doc = "[`conditional`]: https://docs.rs/turret-conditional"
)]
#![cfg_attr(
    not(feature = "cache"),
    doc = "[`cache`]: https://docs.rs/turret-cache"
)]
#![cfg_attr(
    not(feature = "cached"),
    doc = "[`cached`]: https://docs.rs/turret-macros"
)]
#![cfg_attr(
    not(feature = "stampede"),
    doc = "[`stampede`]: https://docs.rs/turret-stampede"
)]
#![cfg_attr(
    not(feature = "writebehind"),
    doc = "[`writebehind`]: https://docs.rs/turret-writebehind"
)]

#[cfg(feature = "redis")]
#[doc(inline)]
pub use turret_redis as redis;

#[cfg(feature = "ratelimit")]
#[doc(inline)]
pub use turret_ratelimit as ratelimit;

#[cfg(feature = "conditional")]
#[doc(inline)]
pub use turret_conditional as conditional;

#[cfg(feature = "stampede")]
#[doc(inline)]
pub use turret_stampede as stampede;

#[cfg(feature = "cache")]
#[doc(inline)]
pub use turret_cache as cache;

#[cfg(feature = "cached")]
#[doc(inline)]
pub use turret_stampede::cached;

#[cfg(feature = "writebehind")]
#[doc(inline)]
pub use turret_writebehind as writebehind;

//! Rate limiting for any tower service: per client, per route, per API key, in memory for
//! one instance or on Redis so that a whole fleet shares one quota.
//!
//! A refusal is `429 Too Many Requests` with `Retry-After` (rounded up, never 0) and the
//! rate-limit fields of draft-ietf-httpapi-ratelimit-headers-10 (`RateLimit-Policy:
//! "default";q=100;w=60`, `RateLimit: "default";r=0;t=12`) plus the de-facto
//! `X-RateLimit-Limit`, `-Remaining` and `-Reset` (delay-seconds). Admitted responses carry the
//! same fields ([`HeaderMode`]). A gRPC request (`content-type: application/grpc…`) is refused
//! with a trailers-only response, HTTP 200 and `grpc-status: 8` (RESOURCE_EXHAUSTED), with the
//! retry delay as a `google.rpc.RetryInfo` in `grpc-status-details-bin` (a `google.rpc.Status`,
//! so clients' retry policies can read it); a missing key gives `grpc-status: 13` (INTERNAL) and a fail-closed refusal `14` (UNAVAILABLE)
//! where an HTTP client gets 500 and 503.
//!
//! The decision is made in `call`, per key, so it holds behind axum's per-request cloning
//! (unlike `tower::limit::RateLimit`, whose budget is per clone).
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use turret_ratelimit::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(Quota::per_minute(2)).exempt("/health"))
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let request = || {
//!     let mut req = Request::new(String::new());
//!     // axum inserts the peer address as `ConnectInfo<SocketAddr>` (feature `axum`).
//!     req.extensions_mut().insert("203.0.113.7:50000".parse::<SocketAddr>().unwrap());
//!     req
//! };
//! let first = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.headers()["ratelimit"], "\"default\";r=1;t=30");
//! svc.clone().oneshot(request()).await.unwrap();
//!
//! let third = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "30");
//! # }
//! ```
//!
//! # Per API key, per route, and a fleet on Redis
//!
#![cfg_attr(feature = "redis", doc = "```no_run")]
#![cfg_attr(not(feature = "redis"), doc = "```ignore")]
//! use http::Method;
//! use turret_ratelimit::{ClientIp, HeaderKey, Policy, Quota, RateLimitLayer};
//! use turret_redis::{Redis, RedisConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Per API key: 1,000 an hour.
//! let per_key = RateLimitLayer::new(Quota::per_hour(1000))
//!     .key(HeaderKey::new("x-api-key"));
//!
//! // Per client IP behind a load balancer at 10.0.0.0/8: stricter on writes, and a search
//! // costs 5 of its policy's 100 a minute.
//! let per_route = RateLimitLayer::new(Quota::per_minute(100))
//!     .policy(Policy::new("writes", Quota::per_minute(10)).methods([Method::POST, Method::PUT]))
//!     .policy(Policy::new("search", Quota::per_minute(100)).path("/search").cost(|_| 5))
//!     .key(ClientIp::trusting(["10.0.0.0/8"])?)
//!     .exempt("/health");
//!
//! // The same quota for every instance: state on Redis, decided by one script per request.
//! // Still a `RateLimitLayer` (the backend is a value: `.backend_from(Option<Redis>)` lets
//! // configuration choose); `.backend(RedisBackend::new(redis))` makes it part of the type.
//! let redis = Redis::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?).await?;
//! let fleet = RateLimitLayer::new(Quota::per_minute(100))
//!     .redis(redis)
//!     .fallback_to_memory(); // while Redis is down, each instance limits on its own
//! # let _ = (per_key, per_route, fleet); Ok(()) }
//! ```
//!
//! # Several quotas, plans per tenant, delay instead of refuse
//!
//! A [`Plan`] holds quotas that all apply: a request is admitted only if every one admits
//! it, and a refused request spends none of them (all-or-nothing; one script call on Redis).
//! [`Plans`] is a handle to the plans a policy chooses from per request — a key's override,
//! else the plan [`Policy::select_plan`] names, else the default — and changes them on a
//! running service. [`Policy::delay`] holds a request over the rate until its turn
//! (reserved, and given back if the client leaves) instead of answering 429.
//!
//! ```
//! use std::{net::SocketAddr, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use turret_ratelimit::{Plan, Plans, Policy, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Free: 2 a second and 100 an hour, both. Pro: ten times that.
//! let free: Plan = "2/1s,100/1h".parse().unwrap();
//! let plans = Plans::new(free.clone()).with(free.scaled("pro", 10));
//! let api = Policy::with_plans("api", plans.clone())
//!     // In a real service, from what authentication put in the extensions.
//!     .select_plan(|req| req.headers.get("x-plan").and_then(|v| v.to_str().ok()));
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::policies([api]))
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     }));
//! let request = || {
//!     let mut req = Request::new(String::new());
//!     req.extensions_mut().insert("203.0.113.7:50000".parse::<SocketAddr>().unwrap());
//!     req
//! };
//! let first = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(
//!     first.headers()["ratelimit-policy"],
//!     "\"default-1s\";q=2;w=1, \"default-1h\";q=100;w=3600"
//! );
//! svc.clone().oneshot(request()).await.unwrap();
//! let third = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["ratelimit"], "\"default-1s\";r=0;t=1");
//!
//! // At run time, without a restart: one key gets its own plan.
//! plans.override_key("203.0.113.7", Plan::new("partner", Quota::per_second(100)));
//! let fourth = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(fourth.status(), StatusCode::OK);
//!
//! // Delay mode: 10 a second, one at a time; a request over the rate waits up to 1 s.
//! let smooth = Policy::new("smooth", Quota::per_second(10).burst(1)).delay(Duration::from_secs(1));
//! # let _ = smooth;
//! # }
//! ```
//!
//! # Algorithms
//!
//! [`Algorithm::Gcra`] (default), [`Algorithm::FixedWindow`], [`Algorithm::SlidingLog`] and
//! [`Algorithm::SlidingWindow`]; the maths are pure functions shared in meaning by the
//! memory backend and the Redis scripts. On Redis, time is Redis' own (`TIME`), so every
//! instance agrees; a refusal writes nothing; a client refused until a known time is refused
//! again locally until then, without a round trip.

mod algorithm;
mod backend;
mod body;
mod clock;
mod concurrency;
mod future;
mod grpc;
mod headers;
mod key;
mod layer;
mod on_limited;
mod outcome;
mod plan;
mod policy;
mod quota;
mod service;
mod state;
#[cfg(test)]
mod tests;
mod verdict;

pub use algorithm::Decision;
#[cfg(feature = "redis")]
pub use backend::RedisBackend;
pub use backend::memory::DEFAULT_MAX_KEYS;
pub use backend::{AnyBackend, Backend, BackendError, Decide, DecisionFuture, MemoryBackend};
pub use body::ResponseBody;
pub use clock::{FakeMicrosClock, MicrosClock, MonotonicClock};
#[cfg(feature = "redis")]
pub use concurrency::RedisConcurrency;
pub use concurrency::{
    Acquire, AcquireFuture, AnyConcurrency, ConcurrencyBackend, ConcurrencyFuture,
    ConcurrencyLimit, ConcurrencyLimitLayer, MemoryConcurrency, Permit, PermitBody,
};
pub use future::ResponseFuture;
pub use headers::HeaderMode;
pub use key::{
    ClientIp, DEFAULT_IPV6_PREFIX, ForwardingHeader, GlobalKey, HeaderKey, InvalidIpv6Prefix,
    KeyExtractor, MissingKey, PeerIp,
};
pub use layer::RateLimitLayer;
pub use on_limited::{DefaultOnLimited, Limited, OnLimited};
pub use outcome::Outcome;
pub use plan::{Limit, Plan, Plans};
pub use policy::{DEFAULT_MAX_WAITING, Policy, RequestHead};
pub use quota::{Algorithm, ParseQuotaError, Quota};
pub use service::RateLimit;
pub use state::{FailureMode, MissingKeyAction};

//! turret: tower middleware for HTTP services over Redis.
//!
//! Each layer lives in its own crate and is re-exported here behind a feature of the same
//! name; `full` turns them all on.
//!
//! | feature | module | what |
//! |---|---|---|
//! | `redis` | [`redis`] | the shared Redis connection: one node or cluster, timeouts, circuit breaker, scripts, pub/sub |
//! | `ratelimit` | [`ratelimit`] | rate limiting per key: GCRA, fixed and sliding windows, concurrency; memory or Redis |
//! | `conditional` | [`conditional`] | ETags and RFC 9110 preconditions: 304 on reads, 412 before a stale write reaches the handler |
//! | `cache` | [`cache`] | RFC 9111 shared response cache (memory storage; Redis, revalidation and stale serving to come) |
//! | `stampede` | [`stampede`] | single-flight, fleet-wide lease lock with fencing, XFetch, cache-aside, request coalescing |

#[cfg(feature = "redis")]
pub use turret_redis as redis;

#[cfg(feature = "ratelimit")]
pub use turret_ratelimit as ratelimit;

#[cfg(feature = "conditional")]
pub use turret_conditional as conditional;

#[cfg(feature = "stampede")]
pub use turret_stampede as stampede;

#[cfg(feature = "cache")]
pub use turret_cache as cache;

//! turret: tower middleware for HTTP services over Redis.
//!
//! Each layer lives in its own crate and is re-exported here behind a feature of the same
//! name; `full` turns them all on, with Redis.
//!
//! | feature | module | what |
//! |---|---|---|
//! | `redis` | [`redis`] | the shared Redis connection: one node or cluster, timeouts, circuit breaker, scripts, pub/sub; and the Redis parts of the layers turned on |
//! | `ratelimit` | [`ratelimit`] | rate limiting per key: GCRA, fixed and sliding windows, concurrency; memory, or Redis with `redis` |
//! | `conditional` | [`conditional`] | ETags and RFC 9110 preconditions: 304 on reads, 412 before a stale write reaches the handler; validator store in memory, or Redis with `redis` |
//! | `cache` | [`cache`] | RFC 9111 shared response cache: storage in memory, or Redis and two-tier with `redis`; revalidation, stale-while-revalidate, stale-if-error, one origin call per key (turns on `stampede`) |
//! | `cached` | [`cached`] | `#[cached]` on async fns: stampede-safe data caching, the key function generated next to the function (turns on `stampede`) |
//! | `stampede` | [`stampede`] | single-flight, lease lock with fencing (fleet-wide with `redis`), XFetch, cache-aside, request coalescing |
//! | `writebehind` | [`writebehind`] | write-behind queue: writes merged per key and flushed in batches to your sink; bounded memory queue, or a Redis Stream shared by a fleet with `redis` (exactly-once effect through stable batch ids) |
//!
//! The layers' Redis parts come with the `redis` feature only: `features = ["cache"]` builds
//! the in-memory cache without the `redis` crate. Other features: `axum` (with `ratelimit`:
//! the peer address from axum's `ConnectInfo`), `compression` (with `cache` and `redis`: LZ4
//! for large bodies in Redis), `tls` (`rediss://`).
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
pub use turret_redis as redis;

#[cfg(feature = "ratelimit")]
pub use turret_ratelimit as ratelimit;

#[cfg(feature = "conditional")]
pub use turret_conditional as conditional;

#[cfg(feature = "stampede")]
pub use turret_stampede as stampede;

#[cfg(feature = "cache")]
pub use turret_cache as cache;

#[cfg(feature = "cached")]
pub use turret_stampede::cached;

#[cfg(feature = "writebehind")]
pub use turret_writebehind as writebehind;

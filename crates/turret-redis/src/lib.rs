//! The small Redis connection abstraction that every turret layer shares.
//!
//! - [`RedisConfig`]: one node or a cluster from a URL, a key namespace prefix, a connect
//!   timeout, a per-command timeout (default 50 ms) and circuit-breaker thresholds.
//! - [`Redis`]: a cheap-to-clone handle over one multiplexed, self-reconnecting connection
//!   (`ConnectionManager` for one node, the async cluster connection for a cluster). Every
//!   command is bounded by the timeout and guarded by a circuit breaker: once Redis has
//!   failed, commands fail in microseconds with [`Error::Unavailable`] until a probe succeeds.
//! - [`Script`]: Lua scripts run with `EVALSHA` and recovered on `NOSCRIPT` in the same call.
//! - [`KeyBuilder`]: prefixed, hash-tagged keys built safely from untrusted input.
//! - [`Redis::subscribe`]: one RESP3 subscriber connection per handle, fanned out to any
//!   number of [`Subscription`] streams, re-subscribing after reconnects.
//!
//! The `redis` crate is re-exported as [`redis`] so that layers use the same version.
//!
//! # Example
//!
//! ```no_run
//! use std::{sync::LazyLock, time::Duration};
//! use turret_redis::{Redis, RedisConfig, Script};
//!
//! static HITS: LazyLock<Script> = LazyLock::new(|| {
//!     Script::new("hits", "local n = redis.call('INCR', KEYS[1]) \
//!                          redis.call('PEXPIRE', KEYS[1], ARGV[1]) return n")
//! });
//!
//! # async fn run() -> Result<(), turret_redis::Error> {
//! let config = RedisConfig::from_url("redis://127.0.0.1:6379")?
//!     .prefix("shop:")
//!     .command_timeout(Duration::from_millis(20));
//! let redis = Redis::connect(config).await?;
//! let key = redis.key("hits").tag("/products/7").build(); // shop:hits:{/products/7}
//! let hits: i64 = HITS.key(&key).arg(60_000).invoke(&redis).await?;
//! assert!(hits >= 1);
//! # Ok(()) }
//! ```

mod breaker;
mod client;
mod config;
mod error;
mod key;
mod pubsub;
mod script;

pub use breaker::BreakerState;
pub use client::Redis;
pub use config::{
    BreakerConfig, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREFIX, RedisConfig,
    Topology,
};
pub use error::Error;
pub use key::{KeyBuilder, MAX_PART_LEN, push_escaped};
pub use pubsub::{Event, Subscription};
pub use script::{Script, ScriptCall};

/// The `redis` crate, re-exported so that every layer uses the same version.
pub use redis;

//! The response cache (`turret_cache`), configured as a shared cache in front of an origin:
//! it stores only what the origin's own headers allow (RFC 9111: no default TTL, no
//! heuristic freshness), revalidates with the origin's validators, serves stale copies when
//! `stale-while-revalidate` / `stale-if-error` allow, and invalidates a URI on a successful
//! unsafe request to it (§4.4).
//!
//! Storage: process memory (`--cache-size`) without Redis. With `--redis-url`, two tiers:
//! the same memory as L1 in front of Redis (L2) shared by every proxy on it, invalidations
//! published to every proxy's L1, and one origin fetch per key for the whole fleet (a Redis
//! fill lease).

use turret_cache::{DEFAULT_LEASE_WAIT, MemoryStorage, ResponseCacheLayer, TieredStorage};
use turret_redis::Redis;
use turret_stampede::LeaseLock;

use crate::config::Config;

/// The cache layer for `config`, on `redis` when given.
pub(crate) fn layer(config: &Config, redis: Option<Redis>) -> ResponseCacheLayer {
    let memory = MemoryStorage::new(config.cache_size.0);
    let layer = match redis {
        None => ResponseCacheLayer::with_storage(memory),
        Some(redis) => ResponseCacheLayer::with_storage(
            TieredStorage::builder(redis.clone()).l1(memory).build(),
        )
        .fill_lease(LeaseLock::redis(redis), DEFAULT_LEASE_WAIT),
    };
    layer.max_entry_size(config.max_entry_size.0)
}

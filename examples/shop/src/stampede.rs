//! Stampede protection (`turret_stampede`) for the two aggregations: top-selling and the
//! dashboard.
//!
//! `StampedeCache::get_or_compute` keeps each result for a while and makes sure that, when
//! it is missing or expired, one computation runs while every other request waits for its
//! result: in this process (single-flight), and with `--redis-url` in the whole fleet (a
//! Redis lease; the value is stored in Redis, so the other processes read it instead of
//! aggregating). Hot values are refreshed early (XFetch) and slightly stale ones are served
//! while one refresh runs (`grace`).

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use turret_redis::Redis;
use turret_stampede::{CacheKey, StampedeCache};

use crate::errors::ApiError;

/// How long top-selling results are kept (orders only change through the seed).
pub(crate) const TOP_SELLING_TTL: Duration = Duration::from_secs(300);
/// How long the dashboard is kept (product writes also drop it).
pub(crate) const DASHBOARD_TTL: Duration = Duration::from_secs(60);
/// How long past its TTL a value is still served while one refresh runs.
const GRACE: Duration = Duration::from_secs(30);

/// The dashboard's key.
pub(crate) fn dashboard_key() -> CacheKey {
    CacheKey::new("dashboard")
}

/// The key of one top-selling query.
pub(crate) fn top_selling_key(limit: i64) -> CacheKey {
    CacheKey::new("top_selling").part(limit.to_string())
}

/// Where aggregations are kept: nowhere (`--no-stampede`), this process, or Redis.
#[derive(Debug, Clone)]
pub(crate) enum Stampede {
    /// Every request aggregates.
    Off,
    /// Single-flight and values in this process, or (with Redis) a fleet-wide lease and
    /// values in Redis: one type, the backend is a value.
    On(StampedeCache),
}

impl Stampede {
    /// Per the flags: off, in memory, or on `redis`.
    pub(crate) fn new(enabled: bool, redis: Option<Redis>) -> Self {
        match (enabled, redis) {
            (false, _) => Stampede::Off,
            (true, None) => Stampede::On(StampedeCache::new().grace(GRACE)),
            (true, Some(redis)) => Stampede::On(StampedeCache::redis(redis).grace(GRACE)),
        }
    }

    /// The value of `key`, computed by `compute` when missing (once, however many requests
    /// ask at the same time).
    pub(crate) async fn get_or_compute<T, F, Fut>(
        &self,
        key: &CacheKey,
        ttl: Duration,
        compute: F,
    ) -> Result<T, ApiError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    {
        // The computation's error is shared by every waiter, so it must be `Clone`.
        let compute = move || async move { compute().await.map_err(|e| e.to_string()) };
        let out = match self {
            Stampede::Off => return compute().await.map_err(ApiError::Internal),
            Stampede::On(cache) => cache.get_or_compute(key, ttl, compute).await,
        };
        out.map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Drops a stored value (after a write that changes it).
    pub(crate) async fn invalidate(&self, key: &CacheKey) {
        let out = match self {
            Stampede::Off => return,
            Stampede::On(cache) => cache.invalidate(key).await,
        };
        if let Err(e) = out {
            tracing::warn!(error = %e, %key, "stampede cache invalidation failed");
        }
    }
}

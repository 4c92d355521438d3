//! The data cache (`turret_stampede`): product rows, top-selling and the dashboard, each an
//! `#[cached]` method of [`Data`].
//!
//! Behind every one: when the value is missing or expired, one computation runs while every
//! other request waits for its result — in this process, and with `--redis-url` in the whole
//! fleet (a Redis lease). With Redis the store has two tiers: a bounded L1 in each process in
//! front of Redis, every L1 invalidated by pub/sub when any shop writes. Hot values are
//! refreshed early (XFetch) and slightly stale aggregations are served while one refresh
//! runs (`grace`).
//!
//! Product rows are written through: a `PUT` or `POST` stores the row it wrote
//! (`StampedeCache::set`, fenced, so a read that started before the write can never store
//! the older row after it), and a `DELETE` drops it. The response cache in front of the
//! routes keeps whole responses; this cache is what a response-cache miss reads.

use turret_redis::Redis;
use turret_stampede::{StampedeCache, TieredStore, cached};

use crate::{
    db::Db,
    model::{Dashboard, Product, TopProduct},
};

/// The data cache, or the database itself with `--no-stampede`; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Data {
    db: Db,
    cache: StampedeCache,
    enabled: bool,
}

impl Data {
    /// Per the flags: off (every read queries), in this process, or two tiers on `redis`.
    pub(crate) fn new(db: Db, enabled: bool, redis: Option<Redis>) -> Self {
        // Off: the memory cache, never used (a two-tier store would subscribe to Redis for
        // nothing).
        let cache = match redis.filter(|_| enabled) {
            Some(redis) => StampedeCache::tiered(TieredStore::new(redis.clone()), redis),
            None => StampedeCache::new(),
        };
        Self { db, cache, enabled }
    }

    /// A product row (`None`: no such product).
    pub(crate) async fn get_product(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        if self.enabled {
            self.product(id).await
        } else {
            self.db.get_product(id).await
        }
    }

    /// Top-selling products, best first.
    pub(crate) async fn get_top_selling(&self, limit: i64) -> Result<Vec<TopProduct>, sqlx::Error> {
        if self.enabled {
            self.top_selling(limit).await
        } else {
            self.db.top_selling(limit).await
        }
    }

    /// The dashboard's totals.
    pub(crate) async fn get_dashboard(&self) -> Result<Dashboard, sqlx::Error> {
        if self.enabled {
            self.dashboard().await
        } else {
            self.db.dashboard().await
        }
    }

    /// Write-through after the database wrote `product` (an update or a create).
    pub(crate) async fn product_written(&self, product: &Product) {
        if !self.enabled {
            return;
        }
        let out = self
            .cache
            .set(
                Self::product_key(product.id),
                &Some(product.clone()),
                &Self::product_options(),
            )
            .await;
        if let Err(e) = out {
            // `set` has dropped the old value (best effort); the next read queries.
            tracing::warn!(error = %e, id = product.id, "product write-through failed");
        }
    }

    /// After a delete: the product is gone.
    pub(crate) async fn product_deleted(&self, id: i64) {
        self.drop_key(&Self::product_key(id)).await;
    }

    /// After a write that changes the dashboard's totals.
    pub(crate) async fn dashboard_changed(&self) {
        self.drop_key(&Self::dashboard_key()).await;
    }

    async fn drop_key(&self, key: &str) {
        if !self.enabled {
            return;
        }
        if let Err(e) = self.cache.invalidate(key).await {
            tracing::warn!(error = %e, key, "data cache invalidation failed");
        }
    }

    /// One product row; unknown ids are kept too (as `None`), so a flood of unknown ids
    /// costs one query each per TTL. Written through by [`Data::product_written`].
    #[cached(cache = self.cache, ttl = "5m", key = "product:{id}")]
    async fn product(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        self.db.get_product(id).await
    }

    /// Orders only change through the seed: kept 5 minutes.
    #[cached(cache = self.cache, ttl = "5m", grace = "30s", key = "top_selling:{limit}")]
    async fn top_selling(&self, limit: i64) -> Result<Vec<TopProduct>, sqlx::Error> {
        self.db.top_selling(limit).await
    }

    /// Kept a minute; product creates and deletes drop it.
    #[cached(cache = self.cache, ttl = "1m", grace = "30s", key = "dashboard")]
    async fn dashboard(&self) -> Result<Dashboard, sqlx::Error> {
        self.db.dashboard().await
    }
}

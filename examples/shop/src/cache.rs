//! The response cache (`turret_cache`): its per-route policies, the tags the handlers put
//! on responses, and invalidation after writes. All of the cache's wiring is here.
//!
//! - `/products/*`: kept `--cache-ttl` (default 5 minutes), keyed by `skip`, `limit` and
//!   `category` only (other query parameters share the entry), tagged `products`.
//! - `/categories/*`: kept 1 hour, tagged `categories`.
//! - Handlers add finer tags in a `Surrogate-Key` field (the layer reads it and strips it
//!   from the response): `product:7`, `product-lists`, `category:3`, `category-lists`.
//!   With `--no-cache` they add none, so the field never reaches a client.
//! - A write invalidates what it changed: `PUT /products/7` → `product:7` and
//!   `product-lists`; `POST /products` → `product-lists`; `PUT /categories/3` →
//!   `category:3` and `category-lists`. The layer itself also invalidates the written URI
//!   (RFC 9111 §4.4).
//!
//! Storage: process memory (64 MiB) without Redis. With `--redis-url`, a two-tier storage:
//! the same memory as L1 in front of Redis (L2) shared by every shop process, so a response
//! one process stored is a hit on the others, and an invalidation on one process reaches
//! all (the storage publishes it; each process drops it from its L1). Misses on one key
//! share one fill for the whole fleet (a Redis lease).

use std::{sync::Arc, time::Duration};

use axum::http::{HeaderName, HeaderValue};
use turret_cache::{
    CacheInvalidator, DEFAULT_LEASE_WAIT, MemoryStorage, Policy, QueryKey, ResponseCacheLayer,
    TieredStorage,
};
use turret_redis::Redis;
use turret_stampede::LeaseLock;

/// How long categories stay in the cache.
pub(crate) const CATEGORY_TTL: Duration = Duration::from_secs(3600);

/// The tag of every product list (`GET /products?…`).
pub(crate) const PRODUCT_LISTS: &str = "product-lists";
/// The tag of the category list.
pub(crate) const CATEGORY_LISTS: &str = "category-lists";

/// The field the handlers put their tags in.
pub(crate) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// The L1 (process memory) bound.
const MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// How long the L1 keeps a response it read from Redis.
const L1_TTL: Duration = Duration::from_secs(30);

/// The tag of one product.
pub(crate) fn product_tag(id: i64) -> String {
    format!("product:{id}")
}

/// The tag of one category.
pub(crate) fn category_tag(id: i64) -> String {
    format!("category:{id}")
}

/// A `Surrogate-Key` value for `tags`.
pub(crate) fn surrogate_key(tags: &[&str]) -> HeaderValue {
    HeaderValue::from_str(&tags.join(" ")).unwrap_or(HeaderValue::from_static(""))
}

/// The cache, or nothing with `--no-cache`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShopCache {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    layer: ResponseCacheLayer,
    invalidator: CacheInvalidator,
}

impl ShopCache {
    /// No cache: [`ShopCache::layer`] is `None` and invalidations do nothing.
    pub(crate) fn off() -> Self {
        Self::default()
    }

    /// The cache with the shop's policies: in memory, or with `redis` two-tier and shared
    /// by every shop process on that Redis.
    pub(crate) fn new(product_ttl: Duration, redis: Option<Redis>) -> Self {
        let layer = match redis {
            None => ResponseCacheLayer::with_storage(MemoryStorage::new(MEMORY_BYTES)),
            Some(redis) => ResponseCacheLayer::with_storage(
                TieredStorage::builder(redis.clone())
                    .l1(MemoryStorage::new(MEMORY_BYTES))
                    .l1_ttl(L1_TTL)
                    .build(),
            )
            .fill_lease(LeaseLock::redis(redis), DEFAULT_LEASE_WAIT),
        };
        let layer = layer
            .route(
                "/products/*",
                Policy::new("products")
                    .ttl(product_ttl)
                    .query(QueryKey::Only(vec![
                        "skip".into(),
                        "limit".into(),
                        "category".into(),
                    ]))
                    .tags(["products"])
                    .stale_while_revalidate(Duration::from_secs(30)),
            )
            .route(
                "/categories/*",
                Policy::new("categories")
                    .ttl(CATEGORY_TTL)
                    .query(QueryKey::None)
                    .tags(["categories"])
                    .stale_while_revalidate(Duration::from_secs(60)),
            );
        let invalidator = layer.invalidator();
        Self {
            inner: Some(Arc::new(Inner { layer, invalidator })),
        }
    }

    /// Whether the cache is on (the handlers tag their responses only for it).
    /// The operators' purge service (`/admin/purge`) behind `auth`; `None` with the cache
    /// off.
    pub(crate) fn purge_service(
        &self,
        auth: turret_cache::PurgeAuth,
    ) -> Option<turret_cache::PurgeService> {
        let inner = self.inner.as_ref()?;
        Some(turret_cache::PurgeService::new(
            inner.invalidator.clone(),
            auth,
        ))
    }

    pub(crate) fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// The layer to put on the product and category routes.
    pub(crate) fn layer(&self) -> Option<ResponseCacheLayer> {
        self.inner.as_ref().map(|i| i.layer.clone())
    }

    /// Invalidates `tags` (with Redis: on every shop process). Failures are logged: the
    /// write itself has succeeded, and entries expire by their TTL anyway.
    pub(crate) async fn invalidate(&self, tags: &[&str]) {
        let Some(inner) = &self.inner else { return };
        if let Err(e) = inner.invalidator.invalidate_tags(tags).await {
            tracing::warn!(error = %e, ?tags, "cache invalidation failed");
        }
    }
}

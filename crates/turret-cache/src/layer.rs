//! [`ResponseCacheLayer`]: the cache's configuration.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderMap, Uri};
use tower_layer::Layer;
use turret_stampede::{Clock, SingleFlight, SystemClock};

use crate::{
    CacheStorage, CachedResponse, MemoryStorage, Purge, ResponseCache, StorageFuture,
    freshness::StoreRules, key,
};

/// Responses larger than this are never buffered nor stored (1 MiB).
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 1024 * 1024;

/// Shared by every clone of the layer and its services.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) storage: Arc<dyn CacheStorage>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rules: StoreRules,
    pub(crate) max_entry_size: u64,
    pub(crate) flights: Option<SingleFlight<String, Option<Arc<CachedResponse>>>>,
}

/// A tower layer that puts an RFC 9111 shared cache in front of a service.
///
/// Cloning is cheap; clones share the storage and the in-flight misses.
#[derive(Clone)]
pub struct ResponseCacheLayer {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for ResponseCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayer")
            .field("max_entry_size", &self.config.max_entry_size)
            .field("default_ttl", &self.config.rules.default_ttl)
            .field("heuristic_freshness", &self.config.rules.heuristics)
            .field("coalesce", &self.config.flights.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ResponseCacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseCacheLayer {
    /// A cache in process memory ([`MemoryStorage::default`], 64 MiB), storing only what
    /// the response headers allow, with concurrent misses coalesced.
    pub fn new() -> Self {
        Self::with_storage(MemoryStorage::default())
    }

    /// A cache in process memory holding at most about `max_bytes`.
    pub fn memory(max_bytes: u64) -> Self {
        Self::with_storage(MemoryStorage::new(max_bytes))
    }

    /// A cache kept in `storage`.
    pub fn with_storage(storage: impl CacheStorage) -> Self {
        Self {
            config: Arc::new(Config {
                storage: Arc::new(storage),
                clock: Arc::new(SystemClock),
                rules: StoreRules {
                    heuristics: false,
                    default_ttl: None,
                },
                max_entry_size: DEFAULT_MAX_ENTRY_SIZE,
                flights: Some(SingleFlight::new()),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Largest body that is buffered and stored (default [`DEFAULT_MAX_ENTRY_SIZE`]); larger
    /// responses, and responses whose size is not known in advance, stream through.
    pub fn max_entry_size(mut self, bytes: u64) -> Self {
        self.config().max_entry_size = bytes;
        self
    }

    /// Policy: the freshness lifetime of a response that says nothing about caching (no
    /// `max-age`, `s-maxage` or `Expires`) and whose status is heuristically cacheable
    /// (RFC 9110 §15.1) or that is `public`. Every other RFC 9111 §3 rule still applies.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config().rules.default_ttl = Some(ttl);
        self
    }

    /// RFC 9111 §4.2.2 heuristic freshness (10% of `Date − Last-Modified`, at most a day)
    /// for responses without explicit freshness. Off by default.
    pub fn heuristic_freshness(mut self, enabled: bool) -> Self {
        self.config().rules.heuristics = enabled;
        self
    }

    /// Whether concurrent misses on one key share one inner call (default `true`). The
    /// shared call runs on a spawned Tokio task, so it completes even when the requests
    /// that wait for it are dropped.
    pub fn coalesce(mut self, enabled: bool) -> Self {
        self.config().flights = enabled.then(SingleFlight::new);
        self
    }

    /// Removes every stored response for `uri`, for writes the layer does not see (a job, a
    /// message, another route). `uri` must be absolute (`http://shop.example/products?page=2`):
    /// the key is the one the layer builds for a request with that target and `Host`.
    pub fn invalidate(&self, uri: &Uri) -> StorageFuture<()> {
        let key = key::primary_key(uri, &HeaderMap::new());
        tracing::debug!(%key, "invalidating on request of the application");
        self.config.storage.invalidate(&key, Purge::Remove)
    }

    /// The clock used for ages and freshness (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config().clock = Arc::new(clock);
        self
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            config: self.config.clone(),
        }
    }
}

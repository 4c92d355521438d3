//! [`ResponseCacheLayer`]: the cache's configuration, and [`Shared`], what its services share.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{HeaderName, Uri};
use tower_layer::Layer;
use turret_stampede::{Clock, LeaseLock, LockBackend, SingleFlight, SystemClock};

use crate::{
    CacheInvalidator, CacheStorage, CachedResponse, MakeCacheKey, MemoryStorage, Policy,
    ResponseCache, StorageError, StorageFuture,
    freshness::StoreRules,
    lease::FillLease,
    policy::{Pattern, Policies},
};

/// How long a response with a validator is kept after it goes stale (1 minute).
pub const DEFAULT_KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(60);

/// How long the cache remembers that a URL answered uncacheably (30 s): meanwhile its
/// requests go to the origin at once, in parallel, instead of queueing behind one another's
/// fill ([`ResponseCacheLayer::hit_for_miss`]).
pub const DEFAULT_HIT_FOR_MISS: Duration = Duration::from_secs(30);

/// How long a miss waits for another instance's fill before calling the origin itself (2 s).
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(2);

/// Responses larger than this are never buffered nor stored (1 MiB).
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 1024 * 1024;

/// The default bound on the bytes all streaming fills of a layer hold at once: 64 MiB.
pub const DEFAULT_FILL_BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;

/// What to do with a response carrying `Set-Cookie` (never stored as is: the cookie would be
/// replayed to every client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCookie {
    /// Do not store the response (the default; RFC 9111 allows storing, but a shared cache
    /// that replays cookies leaks sessions).
    #[default]
    Bypass,
    /// Store it without the `Set-Cookie` field: the client whose request filled the cache
    /// gets the cookie, later hits do not.
    StoreWithout,
}

/// What every clone of the layer and its services shares: the settings the builder wrote,
/// the backends they talk to, and the live state of the requests in flight.
///
/// One type rather than a `Config` beside a state struct: every decision reads both through
/// one `Arc`, the builder writes settings through `Arc::make_mut` (copy on write), and the
/// live parts are `Arc`s of their own, so every clone shares them, even one whose settings
/// were changed after it was cloned (ARCHITECTURE.md, "Where the cache departs from the
/// tower-http shape").
#[derive(Clone)]
pub(crate) struct Shared {
    // Backends.
    pub(crate) storage: Arc<dyn CacheStorage>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lease: Option<Arc<dyn FillLease>>,

    // Settings.
    pub(crate) rules: StoreRules,
    pub(crate) max_entry_size: u64,
    /// Responses of a known size above this (and within `max_entry_size`) stream while
    /// they are stored, like those of unknown size; smaller ones are read first.
    pub(crate) stream_above: u64,
    /// The bytes all streaming fills may hold at once.
    pub(crate) fill_budget: Arc<turret_body::TeeBudget>,
    pub(crate) policies: Policies,
    /// How long a response with a validator is kept after it goes stale, to be revalidated
    /// with a conditional request instead of fetched again.
    pub(crate) keep_for_revalidation: Duration,
    /// Targeted cache-control fields (RFC 9213), most specific first.
    pub(crate) targeted: Vec<HeaderName>,
    /// Response fields that carry tags.
    pub(crate) tag_fields: Vec<HeaderName>,
    pub(crate) expose_tags: bool,
    pub(crate) lease_wait: Duration,
    /// Tags to invalidate per application event ([`CacheInvalidator::emit`]).
    pub(crate) events: Arc<HashMap<String, Vec<String>>>,
    /// How long a hit-for-miss marker lives (zero: none are stored).
    pub(crate) hit_for_miss: Duration,

    // Live state.
    /// The misses in flight in this process (`None`: not coalesced).
    pub(crate) flights: Option<SingleFlight<String, Option<Arc<CachedResponse>>>>,
    /// Keys whose stale-while-revalidate refresh runs in this process.
    pub(crate) refreshing: Arc<Mutex<HashSet<String>>>,
    /// Whether the last storage operation failed (to log state changes, not every error).
    pub(crate) storage_failing: Arc<AtomicBool>,
}

impl Shared {
    /// Counts a storage error; logs once when the storage starts failing (then every
    /// request is a miss, answered by the origin), not once per request.
    pub(crate) fn storage_error(&self, op: &'static str, e: &StorageError) {
        metrics::counter!("turret_cache_backend_errors_total", "op" => op).increment(1);
        if !self.storage_failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(op, error = %e, "cache storage failing; requests go to the origin");
        } else {
            tracing::debug!(op, error = %e, "cache storage error");
        }
    }

    /// Notes a storage success; logs once when the storage recovers. Only an answer that had
    /// to reach the storage counts: a synchronous one (memory, a two-tier storage's L1) and
    /// a write (a two-tier storage takes it into its L1 when Redis is down) say nothing about
    /// a storage that was failing, and counting them made the log flap.
    pub(crate) fn storage_ok(&self) {
        if self.storage_failing.load(Ordering::Relaxed)
            && self.storage_failing.swap(false, Ordering::Relaxed)
        {
            tracing::info!("cache storage recovered");
        }
    }
}

/// RFC 9213 `CDN-Cache-Control`.
pub(crate) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// A tower layer that puts an RFC 9111 shared cache in front of a service.
///
/// Cloning is cheap; clones share the storage and the in-flight misses.
#[derive(Clone)]
pub struct ResponseCacheLayer {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for ResponseCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayer")
            .field("max_entry_size", &self.shared.max_entry_size)
            .field("default_ttl", &self.shared.rules.default_ttl)
            .field("heuristic_freshness", &self.shared.rules.heuristics)
            .field("coalesce", &self.shared.flights.is_some())
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
            shared: Arc::new(Shared {
                storage: Arc::new(storage),
                clock: Arc::new(SystemClock),
                rules: StoreRules {
                    heuristics: false,
                    default_ttl: None,
                    set_cookie: SetCookie::Bypass,
                },
                max_entry_size: DEFAULT_MAX_ENTRY_SIZE,
                stream_above: u64::MAX,
                fill_budget: Arc::new(turret_body::TeeBudget::new(DEFAULT_FILL_BYTES_IN_FLIGHT)),
                flights: Some(SingleFlight::new()),
                policies: Policies::default(),
                keep_for_revalidation: DEFAULT_KEEP_FOR_REVALIDATION,
                targeted: vec![CDN_CACHE_CONTROL],
                tag_fields: vec![
                    HeaderName::from_static("surrogate-key"),
                    HeaderName::from_static("cache-tag"),
                ],
                expose_tags: false,
                refreshing: Arc::default(),
                lease: None,
                lease_wait: DEFAULT_LEASE_WAIT,
                events: Arc::default(),
                storage_failing: Arc::default(),
                hit_for_miss: DEFAULT_HIT_FOR_MISS,
            }),
        }
    }

    fn settings(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// Largest body that is stored (default [`DEFAULT_MAX_ENTRY_SIZE`]); larger responses
    /// stream through. A response whose size is not known in advance (chunked) streams to
    /// the client as the origin sends it while a copy is kept, and is stored when it ends
    /// within this bound (a streaming fill); a response of a known size within it is read
    /// first, then sent (see [`stream_above`](Self::stream_above)).
    pub fn max_entry_size(mut self, bytes: u64) -> Self {
        self.settings().max_entry_size = bytes;
        self
    }

    /// Responses of a known size above `bytes` (and within `max_entry_size`) are streaming
    /// fills too: the client's first byte comes when the origin's does, instead of after the
    /// whole body (default: never — a known size within the bound is read first, so that
    /// requests coalesced behind the fill share it). Requests coalesced behind a streaming
    /// fill are released when its head arrives and fetch for themselves; the requests after
    /// it completes are hits.
    pub fn stream_above(mut self, bytes: u64) -> Self {
        self.settings().stream_above = bytes;
        self
    }

    /// The bytes the streaming fills of this layer hold now (diagnostics and tests).
    pub fn fill_bytes_in_flight(&self) -> u64 {
        self.shared.fill_budget.used()
    }

    /// The bytes all streaming fills of this layer may hold at once (default
    /// [`DEFAULT_FILL_BYTES_IN_FLIGHT`]): a fill that would pass it stops collecting (its
    /// response still streams, uncached), and with the budget spent new fills stream
    /// uncached. `turret_cache_streamed_fills_total{outcome}` counts `stored`, `abandoned`
    /// and `budget`; the gauge `turret_cache_fill_bytes_in_flight` is the budget in use, read
    /// as each fill ends.
    pub fn max_fill_bytes_in_flight(mut self, bytes: u64) -> Self {
        self.settings().fill_budget = Arc::new(turret_body::TeeBudget::new(bytes));
        self
    }

    /// Policy: the freshness lifetime of a response that says nothing about caching (no
    /// `max-age`, `s-maxage` or `Expires`) and whose status is heuristically cacheable
    /// (RFC 9110 §15.1) or that is `public`. Every other RFC 9111 §3 rule still applies.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.settings().rules.default_ttl = Some(ttl);
        self
    }

    /// RFC 9111 §4.2.2 heuristic freshness (10% of `Date − Last-Modified`, at most a day)
    /// for responses without explicit freshness. Off by default.
    pub fn heuristic_freshness(mut self, enabled: bool) -> Self {
        self.settings().rules.heuristics = enabled;
        self
    }

    /// Whether concurrent misses on one key share one inner call (default `true`). The
    /// shared call runs on a spawned Tokio task, so it completes even when the requests
    /// that wait for it are dropped.
    pub fn coalesce(mut self, enabled: bool) -> Self {
        self.settings().flights = enabled.then(SingleFlight::new);
        self
    }

    /// Removes every stored response for `uri`, for writes the layer does not see (a job, a
    /// message, another route). `uri` must be absolute (`http://shop.example/products?page=2`):
    /// the key is the one the layer builds for a GET with that target and `Host`. Shorthand
    /// for [`invalidator().invalidate(uri)`](CacheInvalidator::invalidate).
    pub fn invalidate(&self, uri: &Uri) -> StorageFuture<usize> {
        self.invalidator().invalidate(uri)
    }

    /// Removes every stored response tagged `tag`, on every instance sharing the storage.
    /// Shorthand for [`invalidator().invalidate_tag(tag)`](CacheInvalidator::invalidate_tag).
    pub fn invalidate_tag(&self, tag: &str) -> StorageFuture<usize> {
        self.invalidator().invalidate_tag(tag)
    }

    /// A cheap handle for handler code (axum `State` / `Extension`) to invalidate by URI,
    /// tag or application event, hard or soft.
    pub fn invalidator(&self) -> CacheInvalidator {
        CacheInvalidator {
            shared: self.shared.clone(),
        }
    }

    /// The policy for requests whose path matches `pattern`: `/products` (exactly),
    /// `/products/*` (`/products` and anything below it) or `*`. The first matching route
    /// wins; requests matching none get the default policy (the layer's own settings).
    pub fn route(mut self, pattern: &str, policy: Policy) -> Self {
        self.settings()
            .policies
            .routes
            .push((Pattern::new(pattern), Arc::new(policy)));
        self
    }

    /// Replaces the default key (`scheme://host/path?sorted-query`, see [`MakeCacheKey`]).
    pub fn make_key(mut self, make_key: impl MakeCacheKey) -> Self {
        self.settings().policies.make_key = Some(Arc::new(make_key));
        self
    }

    /// After a successful (2xx/3xx) unsafe request to a path matching `pattern`, also
    /// invalidates `tags` — beyond RFC 9111 §4.4, which only invalidates the target URI. For
    /// example a `POST /products` invalidates the `products` tag that every list carries.
    pub fn invalidate_on_write<I, T>(mut self, pattern: &str, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tags = tags.into_iter().map(Into::into).collect();
        self.settings()
            .policies
            .write_rules
            .push((Pattern::new(pattern), tags));
        self
    }

    /// Tags that [`CacheInvalidator::emit`]`(event)` invalidates (an event-to-tags map, for
    /// writes made outside HTTP: a job, a queue consumer).
    pub fn on_event<I, T>(mut self, event: &str, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tags = tags.into_iter().map(Into::into).collect();
        Arc::make_mut(&mut self.settings().events).insert(event.to_owned(), tags);
        self
    }

    /// How long a response with a validator (`ETag` or `Last-Modified`) is kept after it
    /// goes stale so that it can be revalidated with a conditional request (default
    /// [`DEFAULT_KEEP_FOR_REVALIDATION`]). Stored `no-cache` responses live this long.
    pub fn keep_for_revalidation(mut self, keep: Duration) -> Self {
        self.settings().keep_for_revalidation = keep;
        self
    }

    /// The cache's own targeted cache-control field (RFC 9213 §2), e.g. `turret-cache-control`:
    /// when present and valid it overrides `CDN-Cache-Control` and `Cache-Control`.
    pub fn targeted_field(mut self, name: HeaderName) -> Self {
        let settings = self.settings();
        settings.targeted.retain(|n| *n != name);
        settings.targeted.insert(0, name);
        self
    }

    /// Whether `CDN-Cache-Control` (RFC 9213) overrides `Cache-Control` (default `true`).
    pub fn cdn_cache_control(mut self, enabled: bool) -> Self {
        let settings = self.settings();
        settings.targeted.retain(|n| *n != CDN_CACHE_CONTROL);
        if enabled {
            settings.targeted.push(CDN_CACHE_CONTROL);
        }
        self
    }

    /// Response fields whose space- or comma-separated values tag the stored response
    /// (default `Surrogate-Key` and `Cache-Tag`).
    pub fn tag_fields<I: IntoIterator<Item = HeaderName>>(mut self, names: I) -> Self {
        self.settings().tag_fields = names.into_iter().collect();
        self
    }

    /// Whether the tag fields reach the client (default `false`: they are removed, as a CDN
    /// does).
    pub fn expose_tags(mut self, expose: bool) -> Self {
        self.settings().expose_tags = expose;
        self
    }

    /// How long the cache remembers that a URL answered uncacheably (default
    /// [`DEFAULT_HIT_FOR_MISS`]; `Duration::ZERO` turns it off).
    ///
    /// A miss whose response may not be stored (`private`, `no-store`, a request with
    /// `Authorization`, `Set-Cookie`, no freshness, too large…) leaves a *hit-for-miss*
    /// marker in the storage — so with Redis the whole fleet sees it — and for that long
    /// the URL's requests that no stored response matches go to the origin at once and in
    /// parallel, without coalescing or the fill lease: an uncacheable URL is never
    /// serialised behind one request at a time. A response that may be stored replaces the
    /// marker at once; 5xx answers and failures leave none (they are transient, and
    /// coalescing is what protects a struggling origin). Invalidating the URL or one of its
    /// tags removes the marker too.
    pub fn hit_for_miss(mut self, lifetime: Duration) -> Self {
        self.settings().hit_for_miss = lifetime;
        self
    }

    /// What to do with responses that set cookies (default [`SetCookie::Bypass`]).
    pub fn set_cookie(mut self, policy: SetCookie) -> Self {
        self.settings().rules.set_cookie = policy;
        self
    }

    /// Makes concurrent misses on one key share one origin call across every instance: the
    /// instance that takes `lock`'s lease fills, the others wait for its release (woken by
    /// notification) and read what it stored, at most `max_wait` (default
    /// [`DEFAULT_LEASE_WAIT`]) before calling the origin themselves. The same lease makes a
    /// `stale-while-revalidate` refresh run once in the fleet. If the lock's backend is
    /// unreachable, each instance fills on its own.
    pub fn fill_lease<L: LockBackend>(mut self, lock: LeaseLock<L>, max_wait: Duration) -> Self {
        let settings = self.settings();
        settings.lease = Some(Arc::new(lock));
        settings.lease_wait = max_wait;
        self
    }

    /// Keeps entries on this Redis for a fleet: [`TieredStorage`](crate::TieredStorage) (a
    /// memory L1 in each instance, kept coherent by pub/sub invalidation) and a
    /// [`fill_lease`](Self::fill_lease) on the same Redis, so that a miss is filled once for
    /// the whole fleet. The layer's type does not change.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, redis: turret_redis::Redis) -> Self {
        let wait = self.shared.lease_wait;
        self.settings().storage = Arc::new(crate::TieredStorage::new(redis.clone()));
        self.fill_lease(LeaseLock::redis(redis), wait)
    }

    /// [`redis`](Self::redis) when there is one (`Some`), the storage already set otherwise
    /// (memory, from [`ResponseCacheLayer::new`]): the choice a configuration makes at run
    /// time (`REDIS_URL` set or not), in one call.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), turret_redis::Error> {
    /// use std::time::Duration;
    /// use turret_cache::{Policy, ResponseCacheLayer};
    /// use turret_redis::{Redis, RedisConfig};
    ///
    /// let redis = match std::env::var("REDIS_URL") {
    ///     Ok(url) => Some(Redis::connect(RedisConfig::from_url(&url)?).await?),
    ///     Err(_) => None,
    /// };
    /// let cache = ResponseCacheLayer::new()
    ///     .backend_from(redis)
    ///     .route("/products/*", Policy::new("products").ttl(Duration::from_secs(300)));
    /// # let _ = cache; Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn backend_from(self, redis: Option<turret_redis::Redis>) -> Self {
        match redis {
            Some(redis) => self.redis(redis),
            None => self,
        }
    }

    /// The clock used for ages and freshness (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings().clock = Arc::new(clock);
        self
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            shared: self.shared.clone(),
        }
    }
}

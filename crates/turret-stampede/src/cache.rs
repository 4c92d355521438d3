//! The cache-aside API: `get_or_compute`, one computation per key for a whole fleet.

use std::{
    any::{Any, TypeId},
    fmt,
    sync::Arc,
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, SingleFlight,
    clock::{Clock, SystemClock, to_ms},
    envelope::{self, FORMAT_VERSION, Header},
    lock::{AnyLock, LeaseLock, LockBackend, deadline_after},
    store::{AnyStore, Entry, Put, StoreError, ValueStore},
    xfetch::{self, DEFAULT_BETA},
};

/// Default bound on how long a miss waits for another instance's computation before it
/// computes by itself (without storing): 5 s.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);

type Erased = Arc<dyn Any + Send + Sync>;
type FlightKey = (String, TypeId);

/// Cache-aside with stampede protection: `get_or_compute(key, ttl, || async { … })`.
///
/// - **Hit** (fresh): the value, decoded from the store. With probability
///   `exp(−(expiry − now) / (Δ·β))` ([XFetch](crate::should_refresh_early)) the read also
///   starts a refresh in the background, so a hot key is recomputed before it expires.
/// - **Stale within the grace window** ([`StampedeCache::grace`]): the stale value at once,
///   and a refresh in the background (stale-while-revalidate, RFC 5861 style).
/// - **Miss**: callers in this process share one flight ([`SingleFlight`]); the flight takes
///   the key's lease (fleet-wide with [`crate::RedisLock`]), re-reads the store (another
///   instance may have just filled it), computes, stores the value under the lease's
///   fencing token (a store refuses a write whose fence is older than the stored one), and
///   releases the lease, which wakes the waiters of every instance by pub/sub. Instances
///   that found the lease held wait for that wake-up and read the stored value.
///
/// The flight runs detached: a caller that is dropped does not cancel it. Background
/// refreshes use the same flights and the same lease, so a fleet refreshes a key once.
///
/// **Degraded mode.** Store errors read as misses, and a failed write is dropped; when the
/// lock backend is unreachable (Redis down), each instance computes once per key on its own
/// (the in-process flight still coalesces its callers) and stores without a fence. Nothing
/// waits on a dead Redis beyond its command timeout, and the fleet-wide guarantee returns
/// with Redis.
///
/// **Values** are any `serde` type, stored as [postcard](https://docs.rs/postcard) inside a
/// small versioned envelope (computed-at, Δ, expiry, fence). Bytes read from the store are
/// untrusted: one that does not decode as the asked type is a miss, counted in
/// `turret_stampede_cache_corrupt_total`. One key holds one type; callers asking for
/// different types under the same key do not share flights.
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use turret_stampede::{CacheKey, StampedeCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = StampedeCache::new();
/// let key = CacheKey::new("greeting").part("en");
/// let v: String = cache
///     .get_or_compute(&key, Duration::from_secs(60), || async {
///         Ok::<_, Infallible>(String::from("hello"))
///     })
///     .await
///     .unwrap();
/// assert_eq!(v, "hello");
/// // A hit: the closure does not run.
/// let again: String = cache
///     .get_or_compute(&key, Duration::from_secs(60), || async {
///         Ok::<_, Infallible>(String::from("not called"))
///     })
///     .await
///     .unwrap();
/// assert_eq!(again, "hello");
/// # }
/// ```
pub struct StampedeCache<S = AnyStore, L = AnyLock> {
    store: Arc<S>,
    lock: LeaseLock<L>,
    flights: SingleFlight<FlightKey, Erased, Erased>,
    clock: Arc<dyn Clock>,
    beta: f64,
    grace: Duration,
    lock_wait: Duration,
    scoped: scoped::Slots,
}

impl<S, L> Clone for StampedeCache<S, L> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            lock: self.lock.clone(),
            flights: self.flights.clone(),
            clock: self.clock.clone(),
            beta: self.beta,
            grace: self.grace,
            lock_wait: self.lock_wait,
            scoped: self.scoped.clone(),
        }
    }
}

impl<S: fmt::Debug, L: fmt::Debug> fmt::Debug for StampedeCache<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StampedeCache")
            .field("store", &self.store)
            .field("lock", &self.lock)
            .field("beta", &self.beta)
            .field("grace", &self.grace)
            .field("lock_wait", &self.lock_wait)
            .finish_non_exhaustive()
    }
}

impl Default for StampedeCache {
    fn default() -> Self {
        Self::new()
    }
}

impl StampedeCache {
    /// A cache for one process: a bounded memory store (64 MiB) and a memory lock.
    pub fn new() -> Self {
        Self::from_parts(AnyStore::default(), AnyLock::default())
    }

    /// A cache shared by a fleet: values and leases on this Redis. The same type as
    /// [`StampedeCache::new`]'s, so the choice is a value:
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), turret_redis::Error> {
    /// use turret_redis::{Redis, RedisConfig};
    /// use turret_stampede::StampedeCache;
    ///
    /// let cache: StampedeCache = match std::env::var("REDIS_URL") {
    ///     Ok(url) => StampedeCache::redis(Redis::connect(RedisConfig::from_url(&url)?).await?),
    ///     Err(_) => StampedeCache::new(),
    /// };
    /// # let _ = cache; Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(redis: turret_redis::Redis) -> Self {
        Self::from_parts(
            crate::RedisStore::new(redis.clone()),
            crate::RedisLock::new(redis),
        )
    }

    /// A cache shared by a fleet with a memory L1 in each instance: `store` (a
    /// [`TieredStore`](crate::TieredStore) over this Redis) for values, this Redis for
    /// leases. The same type as [`StampedeCache::new`]'s.
    #[cfg(feature = "redis")]
    pub fn tiered(store: crate::TieredStore, redis: turret_redis::Redis) -> Self {
        Self::from_parts(store, crate::RedisLock::new(redis))
    }

    /// A cache over a store and a lock chosen at run time (the lease settings are
    /// [`LeaseLock::new`]'s defaults; [`StampedeCache::with`] takes a configured
    /// [`LeaseLock`]).
    pub fn from_parts(store: impl Into<AnyStore>, lock: impl Into<AnyLock>) -> Self {
        Self::with(store.into(), LeaseLock::new(lock.into()))
    }
}

impl<S: ValueStore, L: LockBackend> StampedeCache<S, L> {
    /// A cache over a store and a lease lock.
    pub fn with(store: S, lock: LeaseLock<L>) -> Self {
        Self {
            store: Arc::new(store),
            lock,
            flights: SingleFlight::new(),
            clock: Arc::new(SystemClock),
            beta: DEFAULT_BETA,
            grace: Duration::ZERO,
            lock_wait: DEFAULT_LOCK_WAIT,
            scoped: scoped::Slots::default(),
        }
    }

    /// XFetch's β (default 1, the optimum; larger refreshes earlier, 0 never early).
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// How long past its freshness a value is still served (at once, while one refresh
    /// runs in the background). Default 0: no stale serving.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long a miss waits for another instance's computation before computing by itself,
    /// unstored (default 5 s).
    pub fn lock_wait(mut self, lock_wait: Duration) -> Self {
        self.lock_wait = lock_wait;
        self
    }

    /// Bounds how long a caller waits for the in-process flight; past it the caller gets
    /// [`Error::Timeout`] (default: unbounded, the flight itself being bounded by
    /// [`StampedeCache::lock_wait`] and the computation).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.flights = self.flights.wait_timeout(timeout);
        self
    }

    /// The wall clock values are stamped with (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The lease lock.
    pub fn lock(&self) -> &LeaseLock<L> {
        &self.lock
    }

    /// The value of `key`, computed by `f` on a miss and kept for `ttl` (see the type's
    /// docs). `f` runs at most once per key at a time in this process — and, with Redis,
    /// in the fleet; its error is shared by the callers that waited for it and is not
    /// cached.
    pub async fn get_or_compute<T, E, F, Fut>(
        &self,
        key: impl AsRef<str>,
        ttl: Duration,
        f: F,
    ) -> Result<T, Error<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.get_or_compute_tagged(key, ttl, &[], f).await
    }

    /// [`StampedeCache::get_or_compute`], storing the value with tags to invalidate it by.
    pub async fn get_or_compute_tagged<T, E, F, Fut>(
        &self,
        key: impl AsRef<str>,
        ttl: Duration,
        tags: &[&str],
        f: F,
    ) -> Result<T, Error<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let key = key.as_ref();
        let tags: Arc<[String]> = tags.iter().map(|t| (*t).to_owned()).collect();
        if let Some((header, value)) = self.read::<T>(key).await {
            let now = self.clock.now();
            let now_ms = to_ms(now);
            let seen = (header.computed_at_ms, header.fence);
            if now_ms < header.expires_at_ms {
                let early = xfetch::draw(
                    now,
                    Duration::from_millis(header.delta_ms),
                    self.beta,
                    Duration::from_millis(header.expires_at_ms),
                );
                if early {
                    metrics::counter!("turret_stampede_cache_reads_total", "result" => "early_refresh").increment(1);
                    self.refresh_in_background::<T, E, F, Fut>(key, ttl, tags, seen, f);
                } else {
                    metrics::counter!("turret_stampede_cache_reads_total", "result" => "hit")
                        .increment(1);
                }
                return Ok(value);
            }
            if now_ms < header.expires_at_ms.saturating_add(to_ms(self.grace)) {
                metrics::counter!("turret_stampede_cache_reads_total", "result" => "stale")
                    .increment(1);
                self.refresh_in_background::<T, E, F, Fut>(key, ttl, tags, seen, f);
                return Ok(value);
            }
        }
        metrics::counter!("turret_stampede_cache_reads_total", "result" => "miss").increment(1);
        let runner = self.clone();
        let owned_key = key.to_owned();
        // Boxed: the miss path's future stays out of the hit's.
        let result = Box::pin(self.flights.call(flight_key::<T, E>(key), move || {
            let fut = f();
            runner.fill_erased::<T, E, Fut>(owned_key, ttl, tags, None, fut)
        }))
        .await;
        match result {
            Ok(value) => match value.downcast_ref::<T>() {
                Some(v) => Ok(v.clone()),
                None => Err(Error::Abandoned),
            },
            Err(e) => Err(match e {
                Error::Compute(e) => match e.downcast_ref::<E>() {
                    Some(e) => Error::Compute(e.clone()),
                    None => Error::Abandoned,
                },
                Error::Panicked(message) => Error::Panicked(message),
                Error::Timeout(bound) => Error::Timeout(bound),
                Error::Abandoned => Error::Abandoned,
            }),
        }
    }

    /// The fresh value of `key`, if stored (no computation, no refresh).
    pub async fn peek<T: DeserializeOwned>(&self, key: impl AsRef<str>) -> Option<T> {
        let (header, value) = self.read::<T>(key.as_ref()).await?;
        (to_ms(self.clock.now()) < header.expires_at_ms).then_some(value)
    }

    /// Removes `key` from the store.
    pub async fn invalidate(&self, key: impl AsRef<str>) -> Result<bool, StoreError> {
        self.store.invalidate(key.as_ref()).await
    }

    /// Removes every value stored with `tag`.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<usize, StoreError> {
        self.store.invalidate_tag(tag).await
    }

    /// Reads and decodes; every failure is a miss. A store answering from memory
    /// ([`ValueStore::get_local`]) runs no future; the others' reads are boxed, which keeps
    /// the futures of `fetch` and `get_or_compute` small (they are moved on every call).
    async fn read<T: DeserializeOwned>(&self, key: &str) -> Option<(Header, T)> {
        let got = match self.store.get_local(key) {
            Some(local) => Ok(local),
            None => Box::pin(self.store.get(key)).await,
        };
        let bytes = match got {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(key, error = %e, "store read failed: a miss");
                return None;
            }
        };
        match envelope::decode::<T>(&bytes) {
            Ok(entry) => Some(entry),
            Err(envelope::DecodeError::Version(version)) => {
                metrics::counter!("turret_stampede_cache_corrupt_total", "reason" => "version")
                    .increment(1);
                tracing::debug!(
                    key,
                    version,
                    "stored value has another format version: a miss"
                );
                None
            }
            Err(envelope::DecodeError::Postcard) => {
                metrics::counter!("turret_stampede_cache_corrupt_total", "reason" => "decode")
                    .increment(1);
                tracing::debug!(key, "stored value does not decode: a miss");
                None
            }
        }
    }

    /// A stored value that is fresh and, if we saw one before, newer than it.
    async fn fresh_newer<T: DeserializeOwned>(
        &self,
        key: &str,
        seen: Option<(u64, u64)>,
    ) -> Option<T> {
        let (header, value) = self.read::<T>(key).await?;
        let fresh = to_ms(self.clock.now()) < header.expires_at_ms;
        let newer =
            seen.is_none_or(|(at, fence)| header.computed_at_ms > at || header.fence > fence);
        (fresh && newer).then_some(value)
    }

    fn refresh_in_background<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        tags: Arc<[String]>,
        seen: (u64, u64),
        f: F,
    ) where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let flight = flight_key::<T, E>(key);
        if self.flights.is_in_flight(&flight) {
            return;
        }
        let this = self.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let runner = this.clone();
            let result = this
                .flights
                .call(flight, move || {
                    let fut = f();
                    runner.fill_erased::<T, E, Fut>(key, ttl, tags, Some(seen), fut)
                })
                .await;
            if result.is_err() {
                metrics::counter!("turret_stampede_cache_refresh_failures_total").increment(1);
            }
        });
    }

    /// [`StampedeCache::fill`] for the detached flights, whose results are shared erased.
    async fn fill_erased<T, E, Fut>(
        self,
        key: String,
        ttl: Duration,
        tags: Arc<[String]>,
        seen: Option<(u64, u64)>,
        fut: Fut,
    ) -> Result<Erased, Erased>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let stored = Stored {
            ttl,
            grace: self.grace,
            tags: &tags,
        };
        match self.fill(&key, &stored, seen, fut).await {
            Ok(v) => Ok(Arc::new(v) as Erased),
            Err(e) => Err(Arc::new(e) as Erased),
        }
    }

    /// The flight: lease, double-check, compute, store (fenced), release.
    async fn fill<T, E, Fut>(
        &self,
        key: &str,
        stored: &Stored<'_>,
        seen: Option<(u64, u64)>,
        fut: Fut,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = deadline_after(self.lock_wait);
        let mut waiter = self.lock.waiter(key);
        loop {
            match waiter.try_acquire().await {
                Ok(Some(guard)) => {
                    if let Some(v) = self.fresh_newer::<T>(key, seen).await {
                        let _ = guard.release().await;
                        return Ok(v);
                    }
                    let result = self
                        .compute_and_store(key, stored, fut, Some(guard.fence()))
                        .await;
                    if guard.is_lost() {
                        tracing::warn!(key, "the lease was lost while computing");
                    }
                    // Releasing publishes: the other instances' waiters wake and read.
                    let _ = guard.release().await;
                    return result;
                }
                Ok(None) => {
                    metrics::counter!("turret_stampede_cache_lease_waits_total").increment(1);
                    if !waiter.wait(deadline).await {
                        metrics::counter!("turret_stampede_cache_lease_wait_timeouts_total")
                            .increment(1);
                        tracing::debug!(key, "lease wait timed out: computing without storing");
                        return self.compute_and_store(key, stored, fut, None).await;
                    }
                    if let Some(v) = self.fresh_newer::<T>(key, seen).await {
                        return Ok(v);
                    }
                }
                Err(e) => {
                    metrics::counter!("turret_stampede_cache_degraded_total").increment(1);
                    tracing::debug!(key, error = %e, "lease unavailable: computing in this process");
                    return self.compute_and_store(key, stored, fut, Some(0)).await;
                }
            }
        }
    }

    /// Computes; stores under `fence` (`None`: does not store).
    async fn compute_and_store<T, E, Fut>(
        &self,
        key: &str,
        stored: &Stored<'_>,
        fut: Fut,
        fence: Option<u64>,
    ) -> Result<T, E>
    where
        T: Serialize,
        Fut: Future<Output = Result<T, E>>,
    {
        metrics::counter!("turret_stampede_cache_computations_total").increment(1);
        let started = to_ms(self.clock.now());
        let value = fut.await?;
        let Some(fence) = fence else {
            return Ok(value);
        };
        let _ = self.store_value(key, stored, &value, started, fence).await;
        Ok(value)
    }

    /// Encodes and stores under `fence`; failures are logged and counted (the cache-aside
    /// paths serve the value anyway, a write-through returns them).
    async fn store_value<T: Serialize>(
        &self,
        key: &str,
        stored: &Stored<'_>,
        value: &T,
        started: u64,
        fence: u64,
    ) -> Result<Put, StoreError> {
        let ttl = stored.ttl;
        let now = to_ms(self.clock.now());
        let header = Header {
            version: FORMAT_VERSION,
            computed_at_ms: now,
            delta_ms: now.saturating_sub(started),
            expires_at_ms: now.saturating_add(to_ms(ttl)),
            fence,
        };
        match envelope::encode(&header, value) {
            Ok(bytes) => {
                let entry = Entry {
                    bytes,
                    fence,
                    ttl: ttl.saturating_add(stored.grace),
                    tags: stored.tags,
                };
                let put = self.store.put(key, entry).await;
                match &put {
                    Ok(Put::Stored) => {}
                    Ok(Put::Refused) => {
                        metrics::counter!("turret_stampede_cache_fenced_writes_refused_total")
                            .increment(1);
                        tracing::info!(
                            key,
                            fence,
                            "stale write refused: a newer lease or write-through wrote the key"
                        );
                    }
                    Err(e) => tracing::debug!(key, error = %e, "store write failed"),
                }
                put
            }
            Err(e) => {
                metrics::counter!("turret_stampede_cache_encode_failures_total").increment(1);
                tracing::warn!(key, error = %e, "value does not encode: not stored");
                Err(StoreError::Backend(format!(
                    "the value does not encode: {e}"
                )))
            }
        }
    }
}

/// What a computed or written value is stored with.
struct Stored<'a> {
    ttl: Duration,
    grace: Duration,
    tags: &'a [String],
}

fn flight_key<T: 'static, E: 'static>(key: &str) -> FlightKey {
    (key.to_owned(), TypeId::of::<(T, E)>())
}

mod scoped;
#[cfg(test)]
mod tests;

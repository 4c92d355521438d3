//! `fetch` (cache-aside whose computation runs in the caller's task and may borrow), the
//! write-through `set`, and the process-wide default cache.

use std::{
    any::Any,
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Notify;

use super::{FlightKey, StampedeCache, Stored, flight_key};
use crate::{
    Options,
    clock::to_ms,
    lock::{LockBackend, LockError},
    store::{Put, StoreError, ValueStore},
    xfetch,
};

/// One key's computation in progress in this process (a miss's leader or a refresh).
#[derive(Default)]
pub(super) struct Slot {
    /// The leader's value, for the callers that waited for it.
    value: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
    finished: AtomicBool,
    done: Notify,
}

/// The computations of `fetch` in progress, one per key (bounded by the keys being computed).
pub(super) type Slots = Arc<Mutex<HashMap<FlightKey, Arc<Slot>>>>;

fn lock(slots: &Slots) -> MutexGuard<'_, HashMap<FlightKey, Arc<Slot>>> {
    slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held by the caller that computes a key; dropping it (done, failed, or the caller's future
/// dropped) frees the key and wakes the callers waiting for it.
struct Claim<'a> {
    slots: &'a Slots,
    key: FlightKey,
    slot: Arc<Slot>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(self.slots).remove(&self.key);
        self.slot.finished.store(true, Ordering::Release);
        self.slot.done.notify_waiters();
    }
}

enum Role<'a> {
    Lead(Claim<'a>),
    Wait(Arc<Slot>),
}

fn claim<'a>(slots: &'a Slots, key: &FlightKey) -> Role<'a> {
    let mut map = lock(slots);
    if let Some(slot) = map.get(key) {
        return Role::Wait(slot.clone());
    }
    let slot = Arc::new(Slot::default());
    map.insert(key.clone(), slot.clone());
    Role::Lead(Claim {
        slots,
        key: key.clone(),
        slot,
    })
}

impl<S: ValueStore, L: LockBackend> StampedeCache<S, L> {
    /// The value of `key`, computed by `f` on a miss and stored with `options` — like
    /// [`StampedeCache::get_or_compute`], with the computation run **in the caller's task**,
    /// so `f` may borrow (a `&Db`, `&self`) and its error is the caller's own type (no
    /// [`Error`](crate::Error) wrapper, no `E: Clone`).
    ///
    /// - Callers of one key in this process share one computation, run by the first of them
    ///   (the leader); the others wait and get its value. If the leader fails or is dropped,
    ///   one waiter takes over with its own closure: errors are never cached nor shared.
    /// - The fleet lease, the double-check, the fenced write and the release are
    ///   `get_or_compute`'s: one computation per key for a fleet on Redis.
    /// - XFetch early refresh: the caller that draws it recomputes (and gets the new value);
    ///   every other caller gets the fresh stored value at once.
    /// - Stale within the grace window: one caller recomputes while every other caller gets
    ///   the stale value at once; if its computation fails it gets the stale value too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use turret_stampede::{Options, StampedeCache};
    ///
    /// struct Db;
    /// impl Db {
    ///     async fn product_name(&self, id: u64) -> Result<String, std::io::Error> {
    ///         Ok(format!("product {id}"))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), std::io::Error> {
    /// let (cache, db) = (StampedeCache::new(), Db);
    /// let options = Options::ttl(Duration::from_secs(600)).tag("products");
    /// // The closure borrows `db`; `?` gives back the database's own error.
    /// let name: String = cache.fetch("product:7", &options, || db.product_name(7)).await?;
    /// assert_eq!(name, "product 7");
    /// # Ok(()) }
    /// ```
    pub async fn fetch<T, E, F, Fut>(
        &self,
        key: impl AsRef<str>,
        options: &Options,
        f: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        let key = key.as_ref();
        let stored = Stored {
            ttl: options.get_ttl(),
            grace: options.get_grace().unwrap_or(self.grace),
            tags: options.get_tags(),
        };
        // Built only off the hit path (it allocates).
        let slot_key = || flight_key::<T, ()>(key);
        if let Some((header, value)) = self.read::<T>(key).await {
            let now = self.clock.now();
            let now_ms = to_ms(now);
            let seen = Some((header.computed_at_ms, header.fence));
            if now_ms < header.expires_at_ms {
                let early = xfetch::draw(
                    now,
                    std::time::Duration::from_millis(header.delta_ms),
                    self.beta,
                    std::time::Duration::from_millis(header.expires_at_ms),
                );
                if early && let Role::Lead(claim) = claim(&self.scoped, &slot_key()) {
                    metrics::counter!("turret_stampede_cache_reads_total", "result" => "early_refresh").increment(1);
                    let refreshed = Box::pin(self.fill(key, &stored, seen, f())).await;
                    drop(claim);
                    return Ok(self.refreshed_or(key, refreshed, value));
                }
                metrics::counter!("turret_stampede_cache_reads_total", "result" => "hit")
                    .increment(1);
                return Ok(value);
            }
            if now_ms < header.expires_at_ms.saturating_add(to_ms(stored.grace)) {
                metrics::counter!("turret_stampede_cache_reads_total", "result" => "stale")
                    .increment(1);
                if let Role::Lead(claim) = claim(&self.scoped, &slot_key()) {
                    let refreshed = Box::pin(self.fill(key, &stored, seen, f())).await;
                    drop(claim);
                    return Ok(self.refreshed_or(key, refreshed, value));
                }
                return Ok(value);
            }
        }
        metrics::counter!("turret_stampede_cache_reads_total", "result" => "miss").increment(1);
        let slot_key = slot_key();
        loop {
            match claim(&self.scoped, &slot_key) {
                Role::Lead(claim) => {
                    // Boxed (as the refreshes above): the hit's future stays small.
                    let result = Box::pin(self.fill(key, &stored, None, f())).await;
                    if let Ok(value) = &result {
                        *claim
                            .slot
                            .value
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(Arc::new(value.clone()));
                    }
                    return result;
                }
                Role::Wait(slot) => {
                    metrics::counter!("turret_stampede_cache_coalesced_total").increment(1);
                    let notified = slot.done.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if !slot.finished.load(Ordering::Acquire) {
                        notified.await;
                    }
                    let shared = slot
                        .value
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    if let Some(value) = shared.as_deref().and_then(|v| v.downcast_ref::<T>()) {
                        return Ok(value.clone());
                    }
                    // The leader failed or was dropped: one of us leads now.
                }
            }
        }
    }

    fn refreshed_or<T, E>(&self, key: &str, refreshed: Result<T, E>, stored: T) -> T {
        refreshed.unwrap_or_else(|_| {
            metrics::counter!("turret_stampede_cache_refresh_failures_total").increment(1);
            tracing::debug!(key, "refresh failed: serving the stored value");
            stored
        })
    }

    /// Write-through: stores `value` under `key` now (after the database write it mirrors),
    /// with `options`' TTL, grace and tags, under a fencing token newer than every lease
    /// granted so far ([`LockBackend::next_fence`]), so a computation that began before this
    /// write — and read the database before it — can never overwrite it when it finishes.
    /// `Put::Refused` means a newer write (or a computation that began after this one)
    /// already stored the key. When no fence can be had (the lock unreachable), the stored
    /// value is invalidated (best effort, so it cannot outlive the database write) and the
    /// error returned.
    ///
    /// ```
    /// use std::{convert::Infallible, time::Duration};
    /// use turret_stampede::{Options, StampedeCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = StampedeCache::new();
    /// let options = Options::ttl(Duration::from_secs(600));
    /// // … UPDATE products SET name = 'new' WHERE id = 7 …
    /// cache.set("product:7", &String::from("new"), &options).await.unwrap();
    /// let name: String = cache
    ///     .fetch("product:7", &options, || async { Ok::<_, Infallible>(String::from("db")) })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(name, "new");
    /// # }
    /// ```
    pub async fn set<T: Serialize>(
        &self,
        key: impl AsRef<str>,
        value: &T,
        options: &Options,
    ) -> Result<Put, StoreError> {
        let key = key.as_ref();
        let fence = match self.lock.next_fence(key).await {
            Ok(fence) => fence,
            Err(e) => {
                // No fence, no write: but the value stored before the database write must
                // not outlive it, so drop it (best effort) and say the write failed.
                metrics::counter!("turret_stampede_cache_write_failures_total").increment(1);
                let _ = self.store.invalidate(key).await;
                return Err(match e {
                    LockError::Unavailable(e) => StoreError::Unavailable(e),
                    LockError::Backend(e) => StoreError::Backend(e),
                });
            }
        };
        let stored = Stored {
            ttl: options.get_ttl(),
            grace: options.get_grace().unwrap_or(self.grace),
            tags: options.get_tags(),
        };
        let now = to_ms(self.clock.now());
        metrics::counter!("turret_stampede_cache_writes_total").increment(1);
        self.store_value(key, &stored, value, now, fence).await
    }
}

static DEFAULT: OnceLock<StampedeCache> = OnceLock::new();

impl StampedeCache {
    /// Makes `cache` the process-wide default — what `#[cached]` free functions use — once,
    /// at start-up. `Err(cache)` if a default was already set or already used (then the
    /// functions that ran have used the memory default).
    ///
    /// ```
    /// use turret_stampede::StampedeCache;
    ///
    /// let cache = StampedeCache::new(); // or StampedeCache::redis(redis) for a fleet
    /// assert!(StampedeCache::set_default(cache).is_ok());
    /// assert!(StampedeCache::set_default(StampedeCache::new()).is_err());
    /// ```
    #[allow(clippy::result_large_err)] // `OnceLock::set`'s shape; called once, at start-up
    pub fn set_default(cache: StampedeCache) -> Result<(), StampedeCache> {
        DEFAULT.set(cache)
    }

    /// The process-wide default cache: the one [`StampedeCache::set_default`] set, or, if
    /// none was, a memory cache (said once in a `warn!` line).
    pub fn default_cache() -> &'static StampedeCache {
        DEFAULT.get_or_init(|| {
            tracing::warn!(
                "no default StampedeCache was set (StampedeCache::set_default): \
                 using one in this process's memory"
            );
            StampedeCache::new()
        })
    }
}

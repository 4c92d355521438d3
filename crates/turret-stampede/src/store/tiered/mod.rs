//! [`TieredStore`]: a bounded memory L1 in front of the [`RedisStore`] (L2), kept coherent
//! across a fleet by pub/sub invalidation messages.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use turret_redis::{Redis, RedisConfig};
//! use turret_stampede::{TieredStore, ValueStore, store::{Entry, Put}};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = Redis::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?).await?;
//! let store = TieredStore::builder(redis)
//!     .l1_max_bytes(32 * 1024 * 1024)
//!     .l1_ttl(Duration::from_secs(30))
//!     .build();
//! let tags = [String::from("products")];
//! let entry = Entry { bytes: "Laptop".into(), fence: 0, ttl: Duration::from_secs(600), tags: &tags };
//! assert_eq!(store.put("product:1", entry).await?, Put::Stored);
//! // The first read asks Redis and copies the value into the L1; the next ones do not.
//! assert_eq!(store.get("product:1").await?.as_deref(), Some(&b"Laptop"[..]));
//! // Every instance's L1 drops the tagged keys.
//! store.invalidate_tag("products").await?;
//! # Ok(()) }
//! ```

mod l1;
mod listen;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::oneshot;
use turret_redis::Redis;

use self::{
    l1::{Fill, L1},
    listen::{CHANNEL, Message, Target},
};
use super::{Entry, Put, RedisStore, StoreError, ValueStore};

/// How long the L1 keeps a value at most, unless set with [`TieredStoreBuilder::l1_ttl`].
pub const DEFAULT_L1_TTL: Duration = Duration::from_secs(30);

/// The L1's byte bound unless set with [`TieredStoreBuilder::l1_max_bytes`]: 64 MiB.
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A two-tier value store: a bounded in-process L1 in front of a [`RedisStore`] (L2) shared
/// by the fleet. Clones share both tiers.
///
/// - **get**: an L1 hit answers with no Redis round trip. A miss reads the L2 (one script:
///   value, fence, tags and time to live) and copies the value into the L1 for the shorter
///   of its remaining time to live and the L1 TTL — unless an invalidation that may concern
///   the key arrived meanwhile (the answer may predate it), or the subscription is not live.
/// - **put**: the fenced write of the L2 (the fence check is Redis'). Stored → the key
///   leaves this L1 at once (the next get copies it from the L2) and an invalidation is
///   published. Refused → nothing changes. Redis unreachable → the L1 keeps the value (a
///   local cache while Redis is down, for at most the L1 TTL) and the error is returned.
/// - **invalidate / invalidate_tag**: on the L2, then in this L1, then published on the
///   `{prefix}stampede:invalidate` channel; every other instance's listener drops the key,
///   or each L1 key stored with the tag, from its own L1.
///
/// Every instance sharing the namespace must use a `TieredStore` (a plain [`RedisStore`]
/// publishes nothing: its writes reach the L1s only when their copies expire).
///
/// # Coherence and the window
///
/// Another instance stops serving a replaced or removed value once the message reaches it:
/// the pub/sub latency. `cargo bench -p turret-stampede --bench tiered_window` prints the
/// p50/p99 from a write on one instance (its `put` returning) to the first read on another
/// that sees the new value: p50 90 µs, p99 259 µs over 1,000 writes on a loopback
/// redis-server (2026-12-02, 2 shared cores at load 2.5: an upper estimate).
///
/// The subscription is *live* from the moment the store's own probe message comes back
/// through it until a gap ([`turret_redis::Event::Gap`]: the subscriber connection dropped,
/// or this listener fell behind). While it is not live — at start, after a gap, or for good
/// when the subscriber cannot be established — the L1 **serves what it holds, each entry
/// within the L1 TTL, and fills nothing**: every L1 miss reads Redis. The L1 is cleared
/// when, after a gap, Redis answers again (a probe publish succeeds, or the first L2
/// command after failures), and when the subscription is live again. So while Redis is
/// down the L1 keeps answering with what it had, and never beyond the L1 TTL; messages
/// missed while it was cut off cost nothing once it is back. [`subscribed`](Self::subscribed)
/// tells whether it is live.
///
/// # Bounds and metrics
///
/// The L1 is bounded by bytes (keys, values and tags; moka's TinyLFU evicts) and its tag
/// index holds only keys the L1 holds. Counters: `turret_stampede_l1_hits_total`,
/// `turret_stampede_l1_misses_total`, `turret_stampede_l1_invalidations_received_total`,
/// `turret_stampede_l1_clears_total`, `turret_stampede_l1_messages_ignored_total`; a gauge
/// `turret_stampede_l1_subscribed` (1 while live). One log line per change of the
/// subscription's state.
///
/// The listener is a Tokio task started by [`build`](TieredStoreBuilder::build); it ends
/// when the last clone of the store is dropped.
#[derive(Clone)]
pub struct TieredStore {
    inner: Arc<Inner>,
}

struct Inner {
    l1: Arc<L1>,
    l2: RedisStore,
    l1_ttl: Duration,
    instance: u64,
    shared: Arc<Shared>,
    /// Dropped with the last clone: ends the listener.
    _shutdown: oneshot::Sender<()>,
}

/// What the listener shares with the store.
pub(super) struct Shared {
    /// The subscription delivers (see the type's docs).
    live: AtomicBool,
    /// The last L2 command failed because Redis was unreachable.
    l2_down: AtomicBool,
}

impl Shared {
    fn live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Whether it changed.
    fn set_live(&self, live: bool) -> bool {
        let changed = self.live.swap(live, Ordering::SeqCst) != live;
        if changed {
            metrics::gauge!("turret_stampede_l1_subscribed").set(if live { 1.0 } else { 0.0 });
        }
        changed
    }

    fn clear(&self, l1: &L1) {
        metrics::counter!("turret_stampede_l1_clears_total").increment(1);
        l1.clear();
    }
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l1_entries", &self.inner.l1.entry_count())
            .field("l1_bytes", &self.inner.l1.weighted_size())
            .field("l1_ttl", &self.inner.l1_ttl)
            .field("subscribed", &self.subscribed())
            .field("l2", &self.inner.l2)
            .field("instance", &format_args!("{:016x}", self.inner.instance))
            .finish()
    }
}

/// Configures a [`TieredStore`]; see [`TieredStore::builder`].
#[derive(Debug)]
pub struct TieredStoreBuilder {
    redis: Redis,
    l1_max_bytes: u64,
    l1_ttl: Duration,
}

impl TieredStoreBuilder {
    /// The L1's bound in bytes of keys, values and tags (default [`DEFAULT_L1_MAX_BYTES`]).
    pub fn l1_max_bytes(mut self, max_bytes: u64) -> Self {
        self.l1_max_bytes = max_bytes;
        self
    }

    /// The longest time the L1 keeps a value (default [`DEFAULT_L1_TTL`]): the bound on
    /// serving a replaced value while invalidation messages cannot arrive.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// Builds the store and spawns its invalidation listener.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the listener is a spawned task).
    pub fn build(self) -> TieredStore {
        let l1 = Arc::new(L1::new(self.l1_max_bytes));
        let shared = Arc::new(Shared {
            live: AtomicBool::new(false),
            l2_down: AtomicBool::new(false),
        });
        let instance = listen::instance_id();
        let (shutdown, stopped) = oneshot::channel();
        tokio::spawn(listen::listen(
            self.redis.clone(),
            l1.clone(),
            shared.clone(),
            instance,
            stopped,
        ));
        TieredStore {
            inner: Arc::new(Inner {
                l1,
                l2: RedisStore::new(self.redis),
                l1_ttl: self.l1_ttl,
                instance,
                shared,
                _shutdown: shutdown,
            }),
        }
    }
}

impl TieredStore {
    /// A two-tier store on this Redis with the defaults ([`DEFAULT_L1_MAX_BYTES`],
    /// [`DEFAULT_L1_TTL`]).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the listener is a spawned task).
    pub fn new(redis: Redis) -> Self {
        Self::builder(redis).build()
    }

    /// Starts configuring a two-tier store on this Redis.
    pub fn builder(redis: Redis) -> TieredStoreBuilder {
        TieredStoreBuilder {
            redis,
            l1_max_bytes: DEFAULT_L1_MAX_BYTES,
            l1_ttl: DEFAULT_L1_TTL,
        }
    }

    /// Whether invalidation messages are known to reach this store's L1 (its own probe came
    /// back since the last gap). While not, the L1 fills nothing.
    pub fn subscribed(&self) -> bool {
        self.inner.shared.live()
    }

    /// Whether the L1 holds `key` now (diagnostics and tests).
    pub fn l1_holds(&self, key: &str) -> bool {
        self.inner.l1.holds(key)
    }

    /// The Redis tier.
    pub fn l2(&self) -> &RedisStore {
        &self.inner.l2
    }
}

impl Inner {
    /// Tracks whether Redis is reachable from the L2's results; the first success after
    /// Redis was unreachable clears the L1 (invalidations may have been missed, and values
    /// kept locally while it was down are not in the L2).
    fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => {
                if self.shared.l2_down.swap(false, Ordering::SeqCst) {
                    self.shared.clear(&self.l1);
                }
            }
            Err(StoreError::Unavailable(_)) => {
                self.shared.l2_down.store(true, Ordering::SeqCst);
            }
            Err(_) => {}
        }
        result
    }

    async fn publish(&self, target: Target<'_>) -> Result<(), StoreError> {
        let message = Message {
            target,
            instance: self.instance,
        };
        let result = self
            .l2
            .redis()
            .publish(CHANNEL, &message.encode())
            .await
            .map(|_| ())
            .map_err(|e| {
                let what = "the invalidation was not published: other instances' L1 may serve the old value for up to l1_ttl";
                if e.is_unavailable() {
                    StoreError::Unavailable(format!("{what}: {e}"))
                } else {
                    StoreError::Backend(format!("{what}: {e}"))
                }
            });
        self.observe(result)
    }
}

impl ValueStore for TieredStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let inner = &*self.inner;
        if let Some(bytes) = inner.l1.get(key) {
            metrics::counter!("turret_stampede_l1_hits_total").increment(1);
            return Ok(Some(bytes));
        }
        metrics::counter!("turret_stampede_l1_misses_total").increment(1);
        let ticket = inner.l1.ticket(key);
        let Some(stored) = inner.observe(inner.l2.get_entry(key).await)? else {
            return Ok(None);
        };
        if inner.shared.live()
            && let Some(tags) = &stored.tags
        {
            let ttl = stored.ttl.map_or(inner.l1_ttl, |t| t.min(inner.l1_ttl));
            inner.l1.fill(
                key,
                ticket,
                Fill {
                    bytes: stored.bytes.clone(),
                    fence: stored.fence,
                    ttl,
                    tags,
                },
            );
        }
        Ok(Some(stored.bytes))
    }

    /// An L1 hit; an L1 miss needs `get` (the L2).
    fn get_local(&self, key: &str) -> Option<Option<Bytes>> {
        let bytes = self.inner.l1.get(key)?;
        metrics::counter!("turret_stampede_l1_hits_total").increment(1);
        Some(Some(bytes))
    }

    async fn put(&self, key: &str, entry: Entry<'_>) -> Result<Put, StoreError> {
        let inner = &*self.inner;
        let local = Fill {
            bytes: entry.bytes.clone(),
            fence: entry.fence,
            ttl: entry.ttl.min(inner.l1_ttl),
            tags: entry.tags,
        };
        match inner.observe(inner.l2.put(key, entry).await) {
            Ok(Put::Stored) => {
                inner.l1.invalidate(key);
                inner.publish(Target::Key(key)).await?;
                Ok(Put::Stored)
            }
            Ok(Put::Refused) => Ok(Put::Refused),
            Err(e @ StoreError::Unavailable(_)) => {
                // Without the L2 the L1 is the cache, for at most the L1 TTL; it is cleared
                // when Redis answers again.
                if !local.ttl.is_zero() {
                    inner.l1.insert(key, local);
                }
                Err(e)
            }
            Err(e) => {
                inner.l1.invalidate(key);
                Err(e)
            }
        }
    }

    async fn invalidate(&self, key: &str) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let l2 = inner.observe(inner.l2.invalidate(key).await);
        inner.l1.invalidate(key);
        let published = inner.publish(Target::Key(key)).await;
        let removed = l2?;
        published.map(|()| removed)
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<usize, StoreError> {
        let inner = &*self.inner;
        let l2 = inner.observe(inner.l2.invalidate_tag(tag).await);
        inner.l1.invalidate_tag(tag);
        let published = inner.publish(Target::Tag(tag)).await;
        let removed = l2?;
        published.map(|()| removed)
    }
}

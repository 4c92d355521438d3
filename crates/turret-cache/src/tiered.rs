//! [`TieredStorage`]: an in-process L1 ([`MemoryStorage`]) in front of a shared L2
//! ([`RedisStorage`]), kept coherent across a fleet by pub/sub invalidation messages.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use turret_cache::{MemoryStorage, ResponseCacheLayer, TieredStorage};
//! use turret_redis::{Redis, RedisConfig};
//!
//! # async fn run() -> Result<(), turret_redis::Error> {
//! let redis = Redis::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?).await?;
//! let storage = TieredStorage::builder(redis)
//!     .l1(MemoryStorage::new(32 * 1024 * 1024))
//!     .l1_ttl(Duration::from_secs(30))
//!     .build();
//! let layer = ResponseCacheLayer::with_storage(storage);
//! # let _ = layer;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use tokio::sync::oneshot;
use turret_redis::{Event, Redis};

use crate::{
    CacheStorage, CachedResponse, Clock, MemoryStorage, Purge, RedisStorage, StorageError,
    StorageFuture, SystemClock, Variants,
};

/// How long the L1 keeps a response at most, unless set with
/// [`TieredStorageBuilder::l1_ttl`].
pub const DEFAULT_L1_TTL: Duration = Duration::from_secs(60);

/// The pub/sub channel of invalidation messages (in the handle's key namespace).
const CHANNEL: &str = "cache-invalidate";

/// A two-tier storage: a bounded in-process [`MemoryStorage`] (L1) in front of a
/// [`RedisStorage`] (L2) shared by the fleet. Clones share both tiers.
///
/// - **get**: the L1 answers when it holds the key (no network I/O); otherwise the L2 does
///   (one `HGETALL`) and its answer fills the L1 for the shorter of the L1 TTL and the
///   longest freshness left among the variants. Entries whose variants are all stale are
///   not copied to the L1, so a revalidated copy in the L2 is seen at once.
/// - **put**: to the L2, then to the L1 when the L1 already holds the key (the next get
///   fills it from the L2 otherwise, with every variant). If the L2 fails, the L1 keeps the
///   response: a local cache while Redis is down.
/// - **invalidate / invalidate_tag**: on the L2, then removed from the L1 (a soft purge also
///   just leaves the L1: the stale copies are read from the L2), then published on the
///   `{prefix}cache-invalidate` channel. Every other instance's background listener removes
///   the key (or every L1 key with the tag) from its own L1.
///
/// # Invalidation window
///
/// Another instance stops serving an invalidated response from its L1 once the message
/// reaches it: the pub/sub latency, milliseconds on a LAN. A fill racing with an
/// invalidation never outlives it (fills that overlap any invalidation are dropped). When
/// Redis is unreachable messages are lost, so the window is at most the L1 TTL: the L1 is
/// cleared when the subscriber connection drops ([`Event::Gap`]) and again at the first
/// successful Redis command after failures (the reconnect), and what it holds meanwhile
/// expires within the L1 TTL.
///
/// The listener is a Tokio task started by [`build`](TieredStorageBuilder::build); it ends
/// when the last clone of the storage is dropped.
#[derive(Clone)]
pub struct TieredStorage {
    inner: Arc<Inner>,
}

struct Inner {
    l1: MemoryStorage,
    l2: RedisStorage,
    l1_ttl: Duration,
    clock: Arc<dyn Clock>,
    instance: u64,
    shared: Arc<Shared>,
    /// Dropped with the last clone: ends the listener.
    _shutdown: oneshot::Sender<()>,
}

/// State the listener shares with the storage.
struct Shared {
    /// Bumped by every invalidation (local, remote, gap): an L2 answer read before a bump
    /// may be older than the invalidation and must not fill the L1.
    epoch: AtomicU64,
    /// The last L2 command failed because Redis was unreachable.
    l2_down: AtomicBool,
}

impl fmt::Debug for TieredStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStorage")
            .field("l1", &self.inner.l1)
            .field("l2", &self.inner.l2)
            .field("l1_ttl", &self.inner.l1_ttl)
            .field("instance", &format_args!("{:016x}", self.inner.instance))
            .finish()
    }
}

/// Configures a [`TieredStorage`]; see [`TieredStorage::builder`].
pub struct TieredStorageBuilder {
    redis: Redis,
    l1: Option<MemoryStorage>,
    l1_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TieredStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStorageBuilder")
            .field("redis", &self.redis)
            .field("l1", &self.l1)
            .field("l1_ttl", &self.l1_ttl)
            .finish_non_exhaustive()
    }
}

impl TieredStorageBuilder {
    /// The L1 (default [`MemoryStorage::default`], 64 MiB).
    pub fn l1(mut self, l1: MemoryStorage) -> Self {
        self.l1 = Some(l1);
        self
    }

    /// The longest time the L1 keeps a response (default [`DEFAULT_L1_TTL`]): the bound on
    /// serving an invalidated response while invalidation messages cannot arrive.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// The clock used to compute how long a response stays fresh in the L1 (default
    /// [`SystemClock`]); use the layer's clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the storage and spawns its invalidation listener.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the listener is a spawned task).
    pub fn build(self) -> TieredStorage {
        let l1 = self.l1.unwrap_or_default();
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            l2_down: AtomicBool::new(false),
        });
        let instance = instance_id();
        let (shutdown, stopped) = oneshot::channel();
        tokio::spawn(listen(
            self.redis.clone(),
            l1.clone(),
            shared.clone(),
            instance,
            stopped,
        ));
        TieredStorage {
            inner: Arc::new(Inner {
                l1,
                // The L1 keeps the decoded responses: the L2 need not keep them again.
                l2: RedisStorage::new(self.redis).keep_decoded(0),
                l1_ttl: self.l1_ttl,
                clock: self.clock,
                instance,
                shared,
                _shutdown: shutdown,
            }),
        }
    }
}

impl TieredStorage {
    /// A two-tier storage on this Redis with the defaults (64 MiB L1, [`DEFAULT_L1_TTL`]).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the listener is a spawned task).
    pub fn new(redis: Redis) -> Self {
        Self::builder(redis).build()
    }

    /// Starts configuring a two-tier storage on this Redis.
    pub fn builder(redis: Redis) -> TieredStorageBuilder {
        TieredStorageBuilder {
            redis,
            l1: None,
            l1_ttl: DEFAULT_L1_TTL,
            clock: Arc::new(SystemClock),
        }
    }

    /// The in-process tier.
    pub fn l1(&self) -> &MemoryStorage {
        &self.inner.l1
    }

    /// The Redis tier.
    pub fn l2(&self) -> &RedisStorage {
        &self.inner.l2
    }
}

impl Shared {
    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

impl Inner {
    /// Tracks whether Redis is reachable from the L2's results; the first success after
    /// Redis was unreachable clears the L1 (invalidations may have been missed).
    fn observe<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        match &result {
            Ok(_) => {
                if self.shared.l2_down.swap(false, Ordering::SeqCst) {
                    tracing::info!("cache L2 reachable again; clearing the L1");
                    self.shared.bump();
                    self.l1.clear();
                    metrics::counter!("turret_cache_l1_clears_total").increment(1);
                }
            }
            Err(e) if unavailable(e) => {
                if !self.shared.l2_down.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "cache L2 unreachable; the L1 serves alone");
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Copies `variants` into the L1 for at most `ttl`, the L1 TTL and the longest freshness
    /// left among them, unless an invalidation happened since `epoch` (they may predate it).
    fn fill(&self, key: &str, variants: &[Arc<CachedResponse>], ttl: Duration, epoch: u64) {
        let now = self.clock.now();
        let Some(left) = variants.iter().filter_map(|v| v.ttl(now)).max() else {
            return;
        };
        let ttl = left.min(ttl).min(self.l1_ttl);
        if ttl.is_zero() || self.shared.epoch() != epoch {
            return;
        }
        for v in variants {
            local(self.l1.put(key, v.clone(), ttl));
        }
        if self.shared.epoch() != epoch {
            // An invalidation ran while filling: it may have missed what was just put.
            local(self.l1.invalidate(key, Purge::Remove));
        }
    }

    fn l1_holds(&self, key: &str) -> bool {
        let mut get = self.l1.get(key);
        matches!(get.take_ready(), Some(Ok(v)) if !v.is_empty())
    }

    async fn publish(&self, message: Message<'_>) -> Result<(), StorageError> {
        let bytes = message.encode();
        let result = self
            .l2
            .redis()
            .publish(CHANNEL, &bytes)
            .await
            .map(|_| ())
            .map_err(StorageError::new);
        self.observe(result)
    }
}

/// Completes an L1 operation: the memory storage does its work before returning.
fn local<T>(mut op: StorageFuture<T>) {
    let _ = op.take_ready();
}

/// Whether a storage error says Redis could not be reached (not a rejected command).
fn unavailable(e: &StorageError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<turret_redis::Error>())
        .is_some_and(turret_redis::Error::is_unavailable)
}

impl CacheStorage for TieredStorage {
    fn get(&self, key: &str) -> StorageFuture<Variants> {
        let mut l1 = self.inner.l1.get(key);
        // Only fresh L1 copies answer: a stale one may have been refreshed in the L2 by
        // another instance (a revalidation or a stale-while-revalidate refresh).
        if let Some(Ok(variants)) = l1.take_ready()
            && !variants.is_empty()
            && {
                let now = self.inner.clock.now();
                variants.iter().all(|v| v.ttl(now).is_some())
            }
        {
            metrics::counter!("turret_cache_l1_hits_total").increment(1);
            return StorageFuture::ready(Ok(variants));
        }
        let inner = self.inner.clone();
        let key = key.to_owned();
        StorageFuture::new(async move {
            let epoch = inner.shared.epoch();
            let result = inner.l2.get(&key).await;
            let variants = inner.observe(result)?;
            inner.fill(&key, &variants, inner.l1_ttl, epoch);
            Ok(variants)
        })
    }

    fn put(&self, key: &str, response: Arc<CachedResponse>, ttl: Duration) -> StorageFuture<()> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        StorageFuture::new(async move {
            let epoch = inner.shared.epoch();
            let result = inner.l2.put(&key, response.clone(), ttl).await;
            let stored = inner.observe(result).is_ok();
            // When the L1 does not hold the key, the L2 may hold other variants of it: the
            // next get copies them all. Without the L2, the L1 is the cache.
            if !stored || inner.l1_holds(&key) {
                inner.fill(&key, std::slice::from_ref(&response), ttl, epoch);
            }
            Ok(())
        })
    }

    fn invalidate(&self, key: &str, purge: Purge) -> StorageFuture<usize> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        StorageFuture::new(async move {
            let result = inner.l2.invalidate(&key, purge).await;
            let l2 = inner.observe(result);
            inner.shared.bump();
            local(inner.l1.invalidate(&key, Purge::Remove));
            let published = inner
                .publish(Message {
                    target: Target::Key(&key),
                    purge,
                    instance: inner.instance,
                })
                .await;
            // The L2 holds every key of the fleet: its count is the answer.
            l2.and_then(|n| published.map(|()| n))
        })
    }

    fn invalidate_tag(&self, tag: &str, purge: Purge) -> StorageFuture<usize> {
        let inner = self.inner.clone();
        let tag = tag.to_owned();
        StorageFuture::new(async move {
            let result = inner.l2.invalidate_tag(&tag, purge).await;
            let l2 = inner.observe(result);
            inner.shared.bump();
            local(inner.l1.invalidate_tag(&tag, Purge::Remove));
            let published = inner
                .publish(Message {
                    target: Target::Tag(&tag),
                    purge,
                    instance: inner.instance,
                })
                .await;
            // The L2 holds every key of the fleet: its count is the answer.
            l2.and_then(|n| published.map(|()| n))
        })
    }
}

/// A random id for this storage, so that it can skip its own messages.
fn instance_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemClock.now().as_nanos());
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// The listener: applies other instances' invalidations to the L1, and clears it after a
/// gap. Ends when the storage is dropped (`stopped`) or the Redis handle is gone.
async fn listen(
    redis: Redis,
    l1: MemoryStorage,
    shared: Arc<Shared>,
    instance: u64,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut subscription = match redis.subscribe(CHANNEL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                error = %e,
                "cannot subscribe to cache invalidations; the L1 is not kept coherent"
            );
            return;
        }
    };
    drop(redis);
    loop {
        let event = {
            let mut recv = pin!(subscription.recv());
            std::future::poll_fn(|cx| {
                if Pin::new(&mut stopped).poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                recv.as_mut().poll(cx)
            })
            .await
        };
        match event {
            None => return,
            Some(Event::Gap) => {
                tracing::info!("cache invalidations may have been missed; clearing the L1");
                metrics::counter!("turret_cache_l1_clears_total").increment(1);
                shared.bump();
                l1.clear();
            }
            Some(Event::Message(bytes)) => match Message::decode(&bytes) {
                Some(m) if m.instance == instance => {}
                Some(m) => {
                    metrics::counter!("turret_cache_invalidations_received_total").increment(1);
                    shared.bump();
                    local(match m.target {
                        Target::Key(key) => l1.invalidate(key, Purge::Remove),
                        Target::Tag(tag) => l1.invalidate_tag(tag, Purge::Remove),
                    });
                }
                None => {
                    metrics::counter!("turret_cache_invalidations_ignored_total").increment(1);
                    tracing::debug!(
                        len = bytes.len(),
                        "ignoring a foreign cache invalidation message"
                    );
                }
            },
        }
    }
}

/// What an invalidation message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target<'a> {
    Key(&'a str),
    Tag(&'a str),
}

/// An invalidation broadcast: `[version 1][b'k' | b't'][purge 0 | 1][at ms, u64 BE]
/// [sender id, u64 BE][key or tag, UTF-8]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message<'a> {
    target: Target<'a>,
    purge: Purge,
    instance: u64,
}

const VERSION: u8 = 1;
const HEADER: usize = 1 + 1 + 1 + 8 + 8;

impl<'a> Message<'a> {
    fn encode(&self) -> Vec<u8> {
        let (kind, name) = match self.target {
            Target::Key(k) => (b'k', k),
            Target::Tag(t) => (b't', t),
        };
        let (mode, at) = match self.purge {
            Purge::Remove => (0u8, 0u64),
            Purge::MarkStale(at) => (1, u64::try_from(at.as_millis()).unwrap_or(u64::MAX)),
        };
        let mut out = Vec::with_capacity(HEADER + name.len());
        out.push(VERSION);
        out.push(kind);
        out.push(mode);
        out.extend_from_slice(&at.to_be_bytes());
        out.extend_from_slice(&self.instance.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out
    }

    /// `None` for anything that is not a message of this version: never a panic.
    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (head, name) = bytes.split_at_checked(HEADER)?;
        if head[0] != VERSION {
            return None;
        }
        let name = std::str::from_utf8(name).ok()?;
        let target = match head[1] {
            b'k' => Target::Key(name),
            b't' => Target::Tag(name),
            _ => return None,
        };
        let at = u64::from_be_bytes(head[3..11].try_into().ok()?);
        let purge = match head[2] {
            0 => Purge::Remove,
            1 => Purge::MarkStale(Duration::from_millis(at)),
            _ => return None,
        };
        let instance = u64::from_be_bytes(head[11..19].try_into().ok()?);
        Some(Self {
            target,
            purge,
            instance,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn messages_round_trip() {
        for message in [
            Message {
                target: Target::Key("http://shop.example/products?page=2"),
                purge: Purge::Remove,
                instance: 7,
            },
            Message {
                target: Target::Tag("product:7"),
                purge: Purge::MarkStale(Duration::from_millis(1_700_000_000_123)),
                instance: u64::MAX,
            },
            Message {
                target: Target::Tag(""),
                purge: Purge::MarkStale(Duration::ZERO),
                instance: 0,
            },
        ] {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes), Some(message));
        }
    }

    #[test]
    fn foreign_or_corrupt_messages_are_ignored() {
        let good = Message {
            target: Target::Key("k"),
            purge: Purge::Remove,
            instance: 1,
        }
        .encode();
        for n in 0..HEADER {
            assert_eq!(Message::decode(&good[..n]), None, "prefix {n}");
        }
        let decodes_with = |i: usize, b: u8| {
            let mut bytes = good.clone();
            bytes[i] = b;
            Message::decode(&bytes).is_some()
        };
        assert!(decodes_with(1, b't'));
        assert!(!decodes_with(0, 2), "unknown version");
        assert!(!decodes_with(1, b'x'), "unknown kind");
        assert!(!decodes_with(2, 9), "unknown purge mode");
        let mut bad_utf8 = good.clone();
        bad_utf8.push(0xff);
        assert_eq!(Message::decode(&bad_utf8), None);
        assert_eq!(Message::decode(b"probe"), None);
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_does_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Some(m) = Message::decode(&bytes) {
                let encoded = m.encode();
                prop_assert_eq!(Message::decode(&encoded), Some(m));
            }
        }
    }
}

//! [`CacheStorage`]: where responses are kept, and [`MemoryStorage`], the bounded default.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use std::collections::{HashMap, HashSet};

use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use crate::CachedResponse;

/// The stored responses under one primary key: one per Vary secondary key.
pub type Variants = Arc<[Arc<CachedResponse>]>;

/// At most this many Vary variants are kept per primary key; the oldest goes first.
pub const MAX_VARIANTS: usize = 8;

/// Where the cache keeps responses. Each method is one whole operation of the cache's own
/// meaning; the layer never reads and writes the backend in separate steps.
///
/// Keys are the cache's primary keys (see [`crate::ResponseCacheLayer`]). A storage may
/// forget anything at any time (bounded size, TTL); it must not return a response stored
/// under another key.
pub trait CacheStorage: Send + Sync + 'static {
    /// The responses stored under `key`, one per Vary secondary key (empty when none).
    fn get(&self, key: &str) -> StorageFuture<Variants>;

    /// Stores `response` under `key`, replacing the variant with the same secondary key, and
    /// keeps the key at least `ttl` (freshness lifetime left + any stale window).
    fn put(&self, key: &str, response: Arc<CachedResponse>, ttl: Duration) -> StorageFuture<()>;

    /// Removes every response stored under `key` (RFC 9111 §4.4), or with
    /// [`Purge::MarkStale`] keeps them stale (a soft purge: they can still be served stale
    /// while one request revalidates). Returns how many keys held responses: 1 or 0.
    fn invalidate(&self, key: &str, purge: Purge) -> StorageFuture<usize>;

    /// Does [`invalidate`](Self::invalidate) for every key holding a response stored with
    /// `tag` (see [`CachedResponse::tags`]), and returns how many keys held responses. A
    /// storage keeps its tag index bounded: entries that expire or are evicted leave it.
    fn invalidate_tag(&self, tag: &str, purge: Purge) -> StorageFuture<usize>;
}

/// How an invalidation treats the stored responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Remove them: the next request is a miss.
    Remove,
    /// Keep them, stale from this time on (since the Unix epoch; see
    /// [`CachedResponse::stale_at`]): the next request revalidates, and
    /// `stale-while-revalidate` may serve them meanwhile.
    MarkStale(Duration),
}

impl<T: CacheStorage + ?Sized> CacheStorage for Arc<T> {
    fn get(&self, key: &str) -> StorageFuture<Variants> {
        (**self).get(key)
    }

    fn put(&self, key: &str, response: Arc<CachedResponse>, ttl: Duration) -> StorageFuture<()> {
        (**self).put(key, response, ttl)
    }

    fn invalidate(&self, key: &str, purge: Purge) -> StorageFuture<usize> {
        (**self).invalidate(key, purge)
    }

    fn invalidate_tag(&self, tag: &str, purge: Purge) -> StorageFuture<usize> {
        (**self).invalidate_tag(tag, purge)
    }
}

/// The result of a [`CacheStorage`] operation: ready at once (memory) or a boxed future
/// (network).
#[must_use = "futures do nothing unless polled"]
pub struct StorageFuture<T> {
    state: State<T>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send>>;

enum State<T> {
    Ready(Option<Result<T, StorageError>>),
    Pending(BoxFuture<T>),
}

impl<T> fmt::Debug for StorageFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Ready(_) => "Ready",
            State::Pending(_) => "Pending",
        };
        f.debug_struct("StorageFuture")
            .field("state", &state)
            .finish()
    }
}

impl<T> StorageFuture<T> {
    /// An operation that is already done.
    pub fn ready(result: Result<T, StorageError>) -> Self {
        Self {
            state: State::Ready(Some(result)),
        }
    }

    /// An operation that runs `future`.
    pub fn new(future: impl Future<Output = Result<T, StorageError>> + Send + 'static) -> Self {
        Self {
            state: State::Pending(Box::pin(future)),
        }
    }

    /// The result if it was ready from the start (lets the memory hit path skip a state).
    pub(crate) fn take_ready(&mut self) -> Option<Result<T, StorageError>> {
        match &mut self.state {
            State::Ready(r) => r.take(),
            State::Pending(_) => None,
        }
    }
}

impl<T> Unpin for StorageFuture<T> {}

impl<T> Future for StorageFuture<T> {
    type Output = Result<T, StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready(r) => Poll::Ready(r.take().unwrap_or_else(|| {
                Err(StorageError::new("storage future polled after completion"))
            })),
            State::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

/// A storage backend failed; the layer treats it as a miss and forwards the request.
#[derive(Debug)]
pub struct StorageError {
    source: Box<dyn StdError + Send + Sync>,
}

impl StorageError {
    /// Wraps the backend's error.
    pub fn new(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache storage error: {}", self.source)
    }
}

impl StdError for StorageError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// One key's entry: its variants, when it expires, and its weight (made once: the cache
/// weighs an entry on insert and on eviction).
#[derive(Clone)]
struct Slot {
    variants: Variants,
    expires: Instant,
    weight: u64,
}

impl Slot {
    fn new(key: &str, variants: Variants, expires: Instant) -> Self {
        let bytes: usize = key.len() + variants.iter().map(|v| v.weight()).sum::<usize>();
        Self {
            variants,
            expires,
            // Never zero: a zero-weight entry would never be evicted.
            weight: (bytes as u64).max(1),
        }
    }

    fn live(&self, now: Instant) -> bool {
        now < self.expires
    }

    fn tags(&self) -> impl Iterator<Item = &String> {
        self.variants.iter().flat_map(|v| v.tags().iter())
    }
}

#[derive(Clone)]
struct SlotWeight;

impl Weighter<String, Slot> for SlotWeight {
    fn weight(&self, _: &String, slot: &Slot) -> u64 {
        slot.weight
    }
}

/// Collects what one insert evicts, so that the tag index is updated after the cache's
/// shard lock is released.
#[derive(Clone)]
struct CollectEvicted;

impl Lifecycle<String, Slot> for CollectEvicted {
    type RequestState = Vec<(String, Slot)>;

    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }

    fn on_evict(&self, evicted: &mut Self::RequestState, key: String, slot: Slot) {
        evicted.push((key, slot));
    }
}

type Map =
    quick_cache::sync::Cache<String, Slot, SlotWeight, foldhash::fast::RandomState, CollectEvicted>;

/// Writers to one key take its stripe of these in turn, so that a put's read-modify-write
/// of the variants is atomic; readers take none.
const WRITE_STRIPES: usize = 64;

/// Below this many bytes per shard, the cache has fewer shards: an entry must fit in 97% of
/// one shard (a 1 MiB body, the default `max_entry_size`, fits in every shard of the
/// default 64 MiB storage).
const MIN_SHARD_BYTES: u64 = 8 * 1024 * 1024;

/// The in-process storage: a sharded map with a scan-resistant eviction (CLOCK-Pro, close
/// to S3-FIFO; `quick_cache`) bounded by the total bytes of its entries, each key expiring
/// after the longest TTL it was given. A read takes one shard's read lock and sets the
/// entry's reference bit; nothing else is recorded per read. Clones share the entries.
#[derive(Clone)]
pub struct MemoryStorage {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Map,
    tags: TagIndex,
    /// The write stripes, by the key's hash.
    writers: Box<[Mutex<()>]>,
    hasher: foldhash::fast::RandomState,
}

/// Tag → the keys holding a response with that tag. Kept in step with the cache: a put
/// indexes the new variants' tags, and a key leaves the index when it is removed, evicted
/// or found expired (an expired key the cache still holds may stay indexed until then; it
/// still counts in the byte bound, and an invalidation does not count it as holding a
/// response), so the index never outgrows the cache.
#[derive(Default)]
struct TagIndex {
    keys: Mutex<HashMap<String, HashSet<Arc<str>>>>,
}

impl TagIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<Arc<str>>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, key: &str, tags: &[String]) {
        if tags.is_empty() {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        let mut index = self.lock();
        for tag in tags {
            index.entry(tag.clone()).or_default().insert(key.clone());
        }
    }

    fn remove_from(
        index: &mut HashMap<String, HashSet<Arc<str>>>,
        key: &str,
        tags: impl Iterator<Item = impl AsRef<str>>,
    ) {
        for tag in tags {
            let tag = tag.as_ref();
            if let Some(keys) = index.get_mut(tag) {
                keys.remove(key);
                if keys.is_empty() {
                    index.remove(tag);
                }
            }
        }
    }

    fn remove<'a>(&self, key: &str, tags: impl Iterator<Item = &'a String>) {
        Self::remove_from(&mut self.lock(), key, tags);
    }

    fn keys(&self, tag: &str) -> Vec<Arc<str>> {
        self.lock()
            .get(tag)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("entries", &self.inner.cache.len())
            .field("weighted_bytes", &self.inner.cache.weight())
            .finish()
    }
}

impl Default for MemoryStorage {
    /// 64 MiB.
    fn default() -> Self {
        Self::new(64 * 1024 * 1024)
    }
}

impl MemoryStorage {
    /// A storage holding at most about `max_bytes` of responses (keys, headers and bodies).
    pub fn new(max_bytes: u64) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let by_size = usize::try_from(max_bytes / MIN_SHARD_BYTES).unwrap_or(usize::MAX);
        // A power of two at most `by_size` (quick_cache rounds up).
        let shards = (threads * 4).min(by_size.max(1));
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let options = OptionsBuilder::new()
            // A guess (4 KiB responses): it sizes the memory of evicted keys' hashes that
            // readmit a key seen again as hot, not the bound.
            .estimated_items_capacity(usize::try_from(max_bytes / 4096).unwrap_or(usize::MAX))
            .weight_capacity(max_bytes)
            .shards(shards)
            .build()
            .unwrap_or_else(|e| unreachable!("valid cache options: {e:?}"));
        // URL keys hash on every hit: foldhash (randomly seeded per process), not SipHash.
        let hasher = foldhash::fast::RandomState::default();
        let cache = Map::with_options(options, SlotWeight, hasher.clone(), CollectEvicted);
        Self {
            inner: Arc::new(Inner {
                cache,
                tags: TagIndex::default(),
                writers: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
                hasher,
            }),
        }
    }

    /// Nothing is pending: evictions, expirations found and their tag-index updates happen
    /// in the operation that causes them. Kept so that callers written for a storage with
    /// deferred maintenance still compile.
    pub fn run_pending_tasks(&self) {}

    /// Removes every entry at once (a two-tier storage's L1 after missed invalidations),
    /// and the tag index with them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn clear(&self) {
        // Every stripe (in order; a writer holds at most one): no put is between its
        // insert and its indexing.
        let _writes: Vec<_> = self
            .inner
            .writers
            .iter()
            .map(|w| w.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        self.inner.cache.clear();
        self.inner.tags.lock().clear();
    }

    /// The total weight of the entries, in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.inner.cache.weight()
    }

    /// The number of keys held (expired ones not yet found included).
    #[cfg(test)]
    fn entry_count(&self) -> usize {
        self.inner.cache.len()
    }
}

impl Inner {
    /// The write stripe of `key`, held while it is read, changed and written back, and
    /// while its tags are indexed or unindexed.
    fn write_lock(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, key);
        // The high bits: quick_cache picks shards by the low ones.
        let stripe = (hash >> 58) as usize % self.writers.len();
        self.writers[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts `slot` (the caller holds `key`'s stripe); returns what the insert evicted
    /// (to [`unindex`](Self::unindex) once the stripe is released) and whether `slot` was
    /// kept (an entry heavier than a shard's budget is refused at once).
    fn insert(&self, key: &str, slot: Slot) -> (Vec<(String, Slot)>, bool) {
        let variants = slot.variants.clone();
        let evicted = self.cache.insert_with_lifecycle(key.to_owned(), slot);
        // A replaced entry is reported evicted too (under the same key): only the new
        // slot's own variants coming back mean it was refused.
        let kept = !evicted
            .iter()
            .any(|(k, s)| k == key && Arc::ptr_eq(&s.variants, &variants));
        (evicted, kept)
    }

    /// Evicted keys leave the tag index, except for the tags the entry now under the same
    /// key holds. Each key's stripe is taken in turn (never two at once), so no writer of
    /// that key is between its insert and its indexing.
    fn unindex(&self, evicted: Vec<(String, Slot)>) {
        for (key, slot) in evicted {
            if slot.tags().next().is_none() {
                continue;
            }
            let _write = self.write_lock(&key);
            let current = self.cache.peek(key.as_str());
            let kept: HashSet<&String> = current.iter().flat_map(Slot::tags).collect();
            self.tags
                .remove(&key, slot.tags().filter(|t| !kept.contains(t)));
        }
    }

    /// Removes `key` if it is still the expired entry found by a read.
    fn remove_expired(&self, key: &str, now: Instant) {
        let _write = self.write_lock(key);
        if let Some((_, slot)) = self.cache.remove_if(key, |slot| !slot.live(now)) {
            self.tags.remove(key, slot.tags());
        }
    }

    /// [`CacheStorage::invalidate`], the caller holding `key`'s stripe: how many keys held
    /// live responses (0 or 1), and what a soft purge's insert evicted.
    fn invalidate(&self, key: &str, purge: Purge) -> (usize, Vec<(String, Slot)>) {
        let now = Instant::now();
        match purge {
            Purge::Remove => match self.cache.remove(key) {
                None => (0, Vec::new()),
                Some((_, slot)) => {
                    self.tags.remove(key, slot.tags());
                    (usize::from(slot.live(now)), Vec::new())
                }
            },
            Purge::MarkStale(at) => match self.cache.peek(key) {
                Some(slot) if slot.live(now) => {
                    let variants: Vec<Arc<CachedResponse>> = slot
                        .variants
                        .iter()
                        .map(|v| Arc::new(v.stale_at(at)))
                        .collect();
                    let (evicted, kept) =
                        self.insert(key, Slot::new(key, variants.into(), slot.expires));
                    if !kept {
                        self.tags.remove(key, slot.tags());
                    }
                    (1, evicted)
                }
                _ => (0, Vec::new()),
            },
        }
    }
}

impl CacheStorage for MemoryStorage {
    fn get(&self, key: &str) -> StorageFuture<Variants> {
        let variants = match self.inner.cache.get(key) {
            None => Arc::from([]),
            Some(slot) => {
                let now = Instant::now();
                if slot.live(now) {
                    slot.variants
                } else {
                    self.inner.remove_expired(key, now);
                    Arc::from([])
                }
            }
        };
        StorageFuture::ready(Ok(variants))
    }

    fn put(&self, key: &str, response: Arc<CachedResponse>, ttl: Duration) -> StorageFuture<()> {
        let inner = &*self.inner;
        let write = inner.write_lock(key);
        let now = Instant::now();
        let mut expires = now + ttl;
        let mut variants: Vec<Arc<CachedResponse>> = Vec::new();
        let old = inner.cache.peek(key);
        if let Some(old) = &old
            && old.live(now)
        {
            variants.extend(old.variants.iter().cloned());
            variants.retain(|v| !v.same_secondary_key(&response));
            if variants.len() >= MAX_VARIANTS {
                variants.remove(0);
            }
            // The key lives as long as the longest TTL it was given.
            expires = expires.max(old.expires);
        }
        variants.push(response);
        let slot = Slot::new(key, variants.into(), expires);
        let new_tags: Vec<String> = slot.tags().cloned().collect();
        let (evicted, kept) = inner.insert(key, slot);
        // Indexed under the stripe: the unindexing of an eviction of this key waits for it,
        // then sees what the key holds.
        if kept {
            inner.tags.add(key, &new_tags);
        }
        if let Some(old) = &old {
            // Tags only the replaced variants (or an expired entry) had leave the index.
            let keep: HashSet<&String> = if kept {
                new_tags.iter().collect()
            } else {
                HashSet::new()
            };
            inner
                .tags
                .remove(key, old.tags().filter(|t| !keep.contains(t)));
        }
        drop(write);
        inner.unindex(evicted);
        StorageFuture::ready(Ok(()))
    }

    fn invalidate(&self, key: &str, purge: Purge) -> StorageFuture<usize> {
        let write = self.inner.write_lock(key);
        let (held, evicted) = self.inner.invalidate(key, purge);
        drop(write);
        self.inner.unindex(evicted);
        StorageFuture::ready(Ok(held))
    }

    fn invalidate_tag(&self, tag: &str, purge: Purge) -> StorageFuture<usize> {
        let mut held = 0;
        for key in self.inner.tags.keys(tag) {
            let write = self.inner.write_lock(&key);
            let (n, evicted) = self.inner.invalidate(&key, purge);
            if self.inner.cache.peek(&*key).is_none() {
                // Whatever left the key (an eviction whose unindexing is still to come, a
                // clear), it is no longer indexed under this tag.
                self.inner
                    .tags
                    .remove(&key, std::iter::once(&tag.to_owned()));
            }
            drop(write);
            self.inner.unindex(evicted);
            held += n;
        }
        StorageFuture::ready(Ok(held))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode, header};

    use super::*;

    fn response(accept: Option<&'static str>, body: &'static str) -> Arc<CachedResponse> {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
        let mut req = HeaderMap::new();
        if let Some(a) = accept {
            req.insert(header::ACCEPT, HeaderValue::from_static(a));
        }
        Arc::new(CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(body.as_bytes()),
            &req,
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(60),
            Duration::ZERO,
        ))
    }

    /// The memory storage answers synchronously.
    fn done<T>(mut f: StorageFuture<T>) -> T {
        f.take_ready()
            .expect("memory storage is synchronous")
            .unwrap()
    }

    fn get(s: &MemoryStorage, key: &str) -> Variants {
        done(s.get(key))
    }

    #[test]
    fn put_replaces_the_same_variant_and_keeps_others() {
        let s = MemoryStorage::default();
        let ttl = Duration::from_secs(60);
        done(s.put("k", response(Some("a"), "1"), ttl));
        done(s.put("k", response(Some("b"), "2"), ttl));
        done(s.put("k", response(Some("a"), "3"), ttl));
        let v = get(&s, "k");
        let bodies: Vec<_> = v.iter().map(|r| r.body().clone()).collect();
        assert_eq!(bodies, vec![Bytes::from("2"), Bytes::from("3")]);
        assert!(get(&s, "other").is_empty());
    }

    #[test]
    fn variants_per_key_are_bounded() {
        let s = MemoryStorage::default();
        let accepts = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        for a in accepts {
            done(s.put("k", response(Some(a), a), Duration::from_secs(60)));
        }
        let v = get(&s, "k");
        assert_eq!(v.len(), MAX_VARIANTS);
        assert_eq!(v[0].body(), &Bytes::from("c"));
    }

    #[test]
    fn invalidate_removes_every_variant() {
        let s = MemoryStorage::default();
        done(s.put("k", response(None, "x"), Duration::from_secs(60)));
        done(s.put(
            "k",
            response(Some("text/html"), "y"),
            Duration::from_secs(60),
        ));
        assert_eq!(
            done(s.invalidate("k", Purge::Remove)),
            1,
            "one key held them"
        );
        assert!(get(&s, "k").is_empty());
        assert_eq!(done(s.invalidate("k", Purge::Remove)), 0, "nothing left");
        assert_eq!(done(s.invalidate("k", Purge::MarkStale(Duration::ZERO))), 0);
    }

    fn tagged(body: &'static str, tags: &[&str]) -> Arc<CachedResponse> {
        let r = Arc::unwrap_or_clone(response(None, body));
        Arc::new(r.with_tags(tags.iter().map(|t| t.to_string()).collect()))
    }

    #[test]
    fn invalidate_tag_removes_every_tagged_key_and_no_other() {
        let s = MemoryStorage::default();
        let ttl = Duration::from_secs(60);
        done(s.put("a", tagged("a", &["products", "product:1"]), ttl));
        done(s.put("b", tagged("b", &["products"]), ttl));
        done(s.put("c", tagged("c", &["categories"]), ttl));
        assert_eq!(done(s.invalidate_tag("products", Purge::Remove)), 2);
        assert!(get(&s, "a").is_empty());
        assert!(get(&s, "b").is_empty());
        assert_eq!(get(&s, "c").len(), 1);
        // Removed keys left the index: nothing else refers to them.
        s.run_pending_tasks();
        assert!(s.inner.tags.keys("product:1").is_empty());
        assert!(s.inner.tags.keys("products").is_empty());
    }

    #[test]
    fn soft_purge_keeps_the_responses_stale() {
        let s = MemoryStorage::default();
        done(s.put("a", tagged("a", &["products"]), Duration::from_secs(60)));
        let at = Duration::from_secs(5);
        assert!(get(&s, "a")[0].ttl(at).is_some());
        done(s.invalidate_tag("products", Purge::MarkStale(at)));
        let v = get(&s, "a");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].ttl(at), None, "stale from the purge on");
        assert_eq!(v[0].body(), &Bytes::from("a"));
    }

    #[test]
    fn replaced_and_evicted_entries_leave_the_tag_index() {
        let s = MemoryStorage::new(64 * 1024);
        let ttl = Duration::from_secs(60);
        done(s.put("a", tagged("a", &["old"]), ttl));
        done(s.put("a", tagged("a2", &["new"]), ttl));
        assert!(s.inner.tags.keys("old").is_empty());
        assert_eq!(s.inner.tags.keys("new").len(), 1);
        for i in 0..200 {
            let body: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
            done(s.put(&format!("k{i}"), tagged(body, &["bulk"]), ttl));
        }
        s.run_pending_tasks();
        let indexed = s.inner.tags.keys("bulk").len() as u64;
        assert!(
            indexed <= s.entry_count() as u64,
            "{indexed} > {}",
            s.entry_count() as u64
        );
    }

    #[test]
    fn total_bytes_are_bounded() {
        let s = MemoryStorage::new(64 * 1024);
        for i in 0..200 {
            let body: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
            done(s.put(
                &format!("k{i}"),
                response(None, body),
                Duration::from_secs(60),
            ));
        }
        s.run_pending_tasks();
        assert!(s.weighted_size() <= 64 * 1024, "{}", s.weighted_size());
        assert!(s.entry_count() > 0, "the storage still holds entries");
    }

    #[test]
    fn an_expired_key_is_not_served_and_leaves_the_tag_index() {
        let s = MemoryStorage::default();
        // A zero TTL has passed by the next read (the clock is monotonic).
        done(s.put("gone", tagged("a", &["t"]), Duration::ZERO));
        done(s.put("kept", tagged("b", &["t"]), Duration::from_secs(60)));
        assert!(get(&s, "gone").is_empty());
        assert_eq!(get(&s, "kept").len(), 1);
        let keys = s.inner.tags.keys("t");
        assert_eq!(keys.len(), 1, "only the live key is indexed");
        assert_eq!(&*keys[0], "kept");
        assert_eq!(done(s.invalidate_tag("t", Purge::Remove)), 1);
    }

    #[test]
    fn an_expired_key_held_is_not_counted_by_an_invalidation() {
        let s = MemoryStorage::default();
        done(s.put("gone", tagged("a", &["t"]), Duration::ZERO));
        assert_eq!(done(s.invalidate_tag("t", Purge::Remove)), 0);
        assert!(s.inner.tags.keys("t").is_empty());
        done(s.put("gone", tagged("a", &["t"]), Duration::ZERO));
        assert_eq!(
            done(s.invalidate("gone", Purge::MarkStale(Duration::ZERO))),
            0
        );
        assert_eq!(done(s.invalidate("gone", Purge::Remove)), 0);
    }

    #[test]
    fn a_key_lives_as_long_as_the_longest_ttl_it_was_given() {
        let s = MemoryStorage::default();
        done(s.put("k", response(Some("a"), "1"), Duration::from_secs(60)));
        done(s.put("k", response(Some("b"), "2"), Duration::ZERO));
        assert_eq!(get(&s, "k").len(), 2);
    }

    #[test]
    fn an_entry_larger_than_the_storage_is_not_kept() {
        let s = MemoryStorage::new(16 * 1024);
        done(s.put("small", tagged("s", &["t"]), Duration::from_secs(60)));
        let big: &'static str = Box::leak("x".repeat(32 * 1024).into_boxed_str());
        done(s.put("big", tagged(big, &["t"]), Duration::from_secs(60)));
        assert!(get(&s, "big").is_empty());
        assert_eq!(get(&s, "small").len(), 1);
        let keys = s.inner.tags.keys("t");
        assert_eq!(keys.len(), 1, "the refused entry is not indexed");
        assert!(s.weighted_size() <= 16 * 1024);
    }

    #[test]
    fn concurrent_puts_and_evictions_keep_the_tag_index_exact() {
        let s = MemoryStorage::new(256 * 1024);
        let ttl = Duration::from_secs(60);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let s = s.clone();
                scope.spawn(move || {
                    for i in 0..500 {
                        let body: &'static str = Box::leak("x".repeat(2048).into_boxed_str());
                        let key = format!("k{}", (i * 7 + t) % 300);
                        let tag = if i % 2 == 0 { "even" } else { "odd" };
                        done(s.put(&key, tagged(body, &[tag, "all"]), ttl));
                        if i % 50 == 0 {
                            done(s.invalidate_tag("odd", Purge::Remove));
                        }
                    }
                });
            }
        });
        assert!(s.weighted_size() <= 256 * 1024);
        // Every indexed key holds a response with the tag, and every held response is
        // indexed under each of its tags.
        for tag in ["even", "odd", "all"] {
            for key in s.inner.tags.keys(tag) {
                let held = get(&s, &key);
                assert!(
                    held.iter().any(|v| v.tags().iter().any(|t| t == tag)),
                    "{key} indexed under {tag} without a response tagged so"
                );
            }
        }
        let mut held = 0;
        for i in 0..300 {
            let key = format!("k{i}");
            for v in get(&s, &key).iter() {
                held += 1;
                for tag in v.tags() {
                    assert!(
                        s.inner.tags.keys(tag).iter().any(|k| **k == *key),
                        "{key} holds {tag} but is not indexed"
                    );
                }
            }
        }
        assert!(held > 0, "the storage still holds responses");
        let all = s.inner.tags.keys("all").len();
        assert_eq!(done(s.invalidate_tag("all", Purge::Remove)), all);
        assert_eq!(s.entry_count(), 0, "every key was tagged `all`");
    }
}

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

use moka::{Expiry, notification::RemovalCause, ops::compute::Op, sync::Cache};

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

#[derive(Clone)]
struct Slot {
    variants: Variants,
    ttl: Duration,
}

struct SlotExpiry;

impl Expiry<String, Slot> for SlotExpiry {
    fn expire_after_create(&self, _: &String, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot,
        _: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        Some(left.map_or(slot.ttl, |left| left.max(slot.ttl)))
    }
}

/// The in-process storage: a moka cache (TinyLFU admission, LRU eviction) bounded by the
/// total bytes of its entries, each key expiring after the longest TTL it was given.
/// Clones share the entries.
#[derive(Clone)]
pub struct MemoryStorage {
    cache: Cache<String, Slot, foldhash::fast::RandomState>,
    tags: Arc<TagIndex>,
}

/// Tag → the keys holding a response with that tag. Kept in step with the cache: a put
/// indexes the new variants' tags, and a key leaves the index when it is removed, expires
/// or is evicted, so the index never outgrows the cache.
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

    fn remove<'a>(&self, key: &str, tags: impl Iterator<Item = &'a String>) {
        let mut index = self.lock();
        for tag in tags {
            if let Some(keys) = index.get_mut(tag.as_str()) {
                keys.remove(key);
                if keys.is_empty() {
                    index.remove(tag.as_str());
                }
            }
        }
    }

    fn keys(&self, tag: &str) -> Vec<Arc<str>> {
        self.lock()
            .get(tag)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn slot_tags(slot: &Slot) -> impl Iterator<Item = &String> {
    slot.variants.iter().flat_map(|v| v.tags().iter())
}

impl fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("entries", &self.cache.entry_count())
            .field("weighted_bytes", &self.cache.weighted_size())
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
        let tags = Arc::new(TagIndex::default());
        let index = tags.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, slot: &Slot| {
                let bytes: usize =
                    key.len() + slot.variants.iter().map(|v| v.weight()).sum::<usize>();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(SlotExpiry)
            .eviction_listener(move |key: Arc<String>, slot: Slot, cause| {
                // A replacement re-indexes in `put`; anything else leaves the index.
                if cause != RemovalCause::Replaced {
                    index.remove(&key, slot_tags(&slot));
                }
            })
            // URL keys hash on every hit: foldhash (randomly seeded per process) instead of
            // SipHash.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self { cache, tags }
    }

    /// Runs moka's pending maintenance (evictions, expirations); for tests and metrics.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Removes every entry at once (a two-tier storage's L1 after missed invalidations);
    /// the removals are processed before it returns, so the tag index is in step again.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }

    /// The total weight of the entries, in bytes (after [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

impl CacheStorage for MemoryStorage {
    fn get(&self, key: &str) -> StorageFuture<Variants> {
        let variants = self
            .cache
            .get(key)
            .map_or_else(|| Arc::from([]), |slot| slot.variants);
        StorageFuture::ready(Ok(variants))
    }

    fn put(&self, key: &str, response: Arc<CachedResponse>, ttl: Duration) -> StorageFuture<()> {
        self.cache.entry_by_ref(key).and_compute_with(|existing| {
            let mut variants: Vec<Arc<CachedResponse>> = Vec::new();
            if let Some(existing) = existing {
                let old = existing.into_value();
                variants.extend(old.variants.iter().cloned());
                variants.retain(|v| !v.same_secondary_key(&response));
                if variants.len() >= MAX_VARIANTS {
                    variants.remove(0);
                }
                // Tags only the replaced variants had leave the index.
                let kept: HashSet<&String> = variants
                    .iter()
                    .chain(std::iter::once(&response))
                    .flat_map(|v| v.tags().iter())
                    .collect();
                self.tags
                    .remove(key, slot_tags(&old).filter(|t| !kept.contains(t)));
            }
            self.tags.add(key, response.tags());
            variants.push(response);
            Op::Put(Slot {
                variants: variants.into(),
                ttl,
            })
        });
        StorageFuture::ready(Ok(()))
    }

    fn invalidate(&self, key: &str, purge: Purge) -> StorageFuture<usize> {
        let mut held = 0;
        match purge {
            Purge::Remove => held = usize::from(self.cache.remove(key).is_some()),
            Purge::MarkStale(at) => {
                self.cache.entry_by_ref(key).and_compute_with(|existing| {
                    let Some(existing) = existing else {
                        return Op::Nop;
                    };
                    held = 1;
                    let slot = existing.into_value();
                    let variants: Vec<Arc<CachedResponse>> = slot
                        .variants
                        .iter()
                        .map(|v| Arc::new(v.stale_at(at)))
                        .collect();
                    Op::Put(Slot {
                        variants: variants.into(),
                        ttl: slot.ttl,
                    })
                });
            }
        }
        StorageFuture::ready(Ok(held))
    }

    fn invalidate_tag(&self, tag: &str, purge: Purge) -> StorageFuture<usize> {
        let mut held = 0;
        for key in self.tags.keys(tag) {
            // Synchronous: done when it returns.
            if let Some(Ok(n)) = self.invalidate(&key, purge).take_ready() {
                held += n;
            }
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
        assert!(s.tags.keys("product:1").is_empty());
        assert!(s.tags.keys("products").is_empty());
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
        assert!(s.tags.keys("old").is_empty());
        assert_eq!(s.tags.keys("new").len(), 1);
        for i in 0..200 {
            let body: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
            done(s.put(&format!("k{i}"), tagged(body, &["bulk"]), ttl));
        }
        s.run_pending_tasks();
        let indexed = s.tags.keys("bulk").len() as u64;
        assert!(
            indexed <= s.cache.entry_count(),
            "{indexed} > {}",
            s.cache.entry_count()
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
    }
}

//! [`CacheStorage`]: where responses are kept, and [`MemoryStorage`], the bounded default.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use moka::{Expiry, ops::compute::Op, sync::Cache};

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

    /// Removes every response stored under `key` (RFC 9111 §4.4).
    fn invalidate(&self, key: &str) -> StorageFuture<()>;
}

impl<T: CacheStorage + ?Sized> CacheStorage for Arc<T> {
    fn get(&self, key: &str) -> StorageFuture<Variants> {
        (**self).get(key)
    }

    fn put(&self, key: &str, response: Arc<CachedResponse>, ttl: Duration) -> StorageFuture<()> {
        (**self).put(key, response, ttl)
    }

    fn invalidate(&self, key: &str) -> StorageFuture<()> {
        (**self).invalidate(key)
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
    cache: Cache<String, Slot>,
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
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, slot: &Slot| {
                let bytes: usize =
                    key.len() + slot.variants.iter().map(|v| v.weight()).sum::<usize>();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(SlotExpiry)
            .build();
        Self { cache }
    }

    /// Runs moka's pending maintenance (evictions, expirations); for tests and metrics.
    pub fn run_pending_tasks(&self) {
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
            let mut variants: Vec<Arc<CachedResponse>> = existing
                .map(|e| e.into_value().variants.iter().cloned().collect())
                .unwrap_or_default();
            variants.retain(|v| !v.same_secondary_key(&response));
            if variants.len() >= MAX_VARIANTS {
                variants.remove(0);
            }
            variants.push(response);
            Op::Put(Slot {
                variants: variants.into(),
                ttl,
            })
        });
        StorageFuture::ready(Ok(()))
    }

    fn invalidate(&self, key: &str) -> StorageFuture<()> {
        self.cache.invalidate(key);
        StorageFuture::ready(Ok(()))
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
        done(s.invalidate("k"));
        assert!(get(&s, "k").is_empty());
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

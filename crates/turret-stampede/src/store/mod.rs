//! Where the cache-aside API keeps values: in memory for one instance, on Redis for a fleet.

mod any;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub mod tiered;

use std::{fmt, time::Duration};

use bytes::Bytes;

pub use any::AnyStore;
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(feature = "redis")]
pub use tiered::{TieredStore, TieredStoreBuilder};

/// One value to store.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The encoded value (opaque to the store).
    pub bytes: Bytes,
    /// The fencing token it was computed under; 0 for a write made without a lease.
    pub fence: u64,
    /// How long to keep it (freshness plus the stale grace window).
    pub ttl: Duration,
    /// Tags to invalidate it by.
    pub tags: &'a [String],
}

/// The outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored.
    Stored,
    /// Refused: the stored value was written under a larger fencing token, so this writer's
    /// lease has passed to someone else since.
    Refused,
}

/// The store failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// Unreachable (Redis down, timing out, or its circuit breaker open).
    Unavailable(String),
    /// It answered with an error.
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "value store unavailable: {e}"),
            StoreError::Backend(e) => write!(f, "value store error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The operations the cache-aside API needs from a store: whole atomic operations, so that
/// the fence check and the write are one step.
pub trait ValueStore: Send + Sync + 'static {
    /// The stored bytes of `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// The answer [`ValueStore::get`] would give, if this store has it in process memory
    /// without any I/O: `Some(Some(bytes))` stored, `Some(None)` not stored; `None` when only
    /// `get` can tell (the default). The cache asks it first, so that a memory hit runs no
    /// future of the store's (and a hit's future stays small).
    fn get_local(&self, key: &str) -> Option<Option<Bytes>> {
        let _ = key;
        None
    }

    /// Stores `entry` unless the stored value carries a larger fence (an `entry.fence` of 0
    /// is never refused).
    fn put(
        &self,
        key: &str,
        entry: Entry<'_>,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send;

    /// Removes `key`; whether it was there.
    fn invalidate(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes every value stored with `tag`; how many (the memory store may count lazily
    /// and report 0).
    fn invalidate_tag(&self, tag: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

//! [`AnyStore`]: the value store chosen at run time, one type whatever the backend.

use bytes::Bytes;

use super::{Entry, MemoryStore, Put, StoreError, ValueStore};

/// A value store chosen at run time — memory, Redis or two-tier — behind one type, so that
/// `StampedeCache` is the same type whichever the configuration picks. Dispatch is a `match`,
/// not a box: a memory hit pays no allocation for it.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// [`MemoryStore`]: one process.
    Memory(MemoryStore),
    /// [`RedisStore`](super::RedisStore): a fleet on one Redis.
    #[cfg(feature = "redis")]
    Redis(super::RedisStore),
    /// [`TieredStore`](super::TieredStore): a bounded memory L1 in front of Redis, kept
    /// coherent across the fleet by pub/sub invalidation.
    #[cfg(feature = "redis")]
    Tiered(super::TieredStore),
}

impl Default for AnyStore {
    fn default() -> Self {
        AnyStore::Memory(MemoryStore::default())
    }
}

impl From<MemoryStore> for AnyStore {
    fn from(store: MemoryStore) -> Self {
        AnyStore::Memory(store)
    }
}

#[cfg(feature = "redis")]
impl From<super::RedisStore> for AnyStore {
    fn from(store: super::RedisStore) -> Self {
        AnyStore::Redis(store)
    }
}

#[cfg(feature = "redis")]
impl From<super::TieredStore> for AnyStore {
    fn from(store: super::TieredStore) -> Self {
        AnyStore::Tiered(store)
    }
}

impl ValueStore for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.get(key).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(s) => s.get(key).await,
            #[cfg(feature = "redis")]
            AnyStore::Tiered(s) => s.get(key).await,
        }
    }

    fn get_local(&self, key: &str) -> Option<Option<Bytes>> {
        match self {
            AnyStore::Memory(s) => s.get_local(key),
            #[cfg(feature = "redis")]
            AnyStore::Redis(s) => s.get_local(key),
            #[cfg(feature = "redis")]
            AnyStore::Tiered(s) => s.get_local(key),
        }
    }

    async fn put(&self, key: &str, entry: Entry<'_>) -> Result<Put, StoreError> {
        match self {
            AnyStore::Memory(s) => s.put(key, entry).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(s) => s.put(key, entry).await,
            #[cfg(feature = "redis")]
            AnyStore::Tiered(s) => s.put(key, entry).await,
        }
    }

    async fn invalidate(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            AnyStore::Memory(s) => s.invalidate(key).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(s) => s.invalidate(key).await,
            #[cfg(feature = "redis")]
            AnyStore::Tiered(s) => s.invalidate(key).await,
        }
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<usize, StoreError> {
        match self {
            AnyStore::Memory(s) => s.invalidate_tag(tag).await,
            #[cfg(feature = "redis")]
            AnyStore::Redis(s) => s.invalidate_tag(tag).await,
            #[cfg(feature = "redis")]
            AnyStore::Tiered(s) => s.invalidate_tag(tag).await,
        }
    }
}

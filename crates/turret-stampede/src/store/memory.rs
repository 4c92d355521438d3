//! A bounded in-memory value store (moka).

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use moka::{
    Expiry,
    ops::compute::{CompResult, Op},
};

use super::{Entry, Put, StoreError, ValueStore};

/// Default byte bound of a `MemoryStore`: 64 MiB.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
struct Stored {
    bytes: Bytes,
    fence: u64,
    ttl: Duration,
    tags: Arc<[String]>,
}

struct PerEntryTtl;

impl Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Stored,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Stored,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Values in this process's memory: bounded by bytes (least recently/frequently used evicted
/// first, TinyLFU), each expiring after its own ttl (the wall clock, not Tokio's).
#[derive(Clone)]
pub struct MemoryStore {
    cache: moka::sync::Cache<String, Stored, foldhash::fast::RandomState>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BYTES)
    }
}

impl MemoryStore {
    /// A store holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Stored| {
                u32::try_from(k.len() + v.bytes.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            // Seeded per store (as the tiered L1): keys hash in a few ns, not SipHash's ~20.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self { cache }
    }
}

impl ValueStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.cache.get(key).map(|s| s.bytes))
    }

    fn get_local(&self, key: &str) -> Option<Option<Bytes>> {
        Some(self.cache.get(key).map(|s| s.bytes))
    }

    async fn put(&self, key: &str, entry: Entry<'_>) -> Result<Put, StoreError> {
        let stored = Stored {
            bytes: entry.bytes,
            fence: entry.fence,
            // moka's timer wheel wants sane durations; nothing needs to live ten years.
            ttl: entry.ttl.min(Duration::from_secs(10 * 365 * 24 * 3600)),
            tags: entry.tags.into(),
        };
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(e) if entry.fence != 0 && e.value().fence > entry.fence => Op::Nop,
                _ => Op::Put(stored),
            });
        Ok(match result {
            CompResult::Unchanged(_) => Put::Refused,
            _ => Put::Stored,
        })
    }

    async fn invalidate(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.cache.remove(key).is_some())
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<usize, StoreError> {
        let tag = tag.to_owned();
        self.cache
            .invalidate_entries_if(move |_, v| v.tags.contains(&tag))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &'static str) -> Entry<'static> {
        Entry {
            bytes: Bytes::from_static(value.as_bytes()),
            fence: 0,
            ttl: Duration::from_secs(60),
            tags: &[],
        }
    }

    #[tokio::test]
    async fn get_local_is_get_without_a_future() {
        let store = MemoryStore::default();
        assert_eq!(
            store.get_local("k"),
            Some(None),
            "a miss is known locally too"
        );
        store.put("k", entry("v1")).await.unwrap();
        assert_eq!(store.get_local("k"), Some(Some(Bytes::from_static(b"v1"))));
        assert_eq!(store.get_local("k"), Some(store.get("k").await.unwrap()));
        store.invalidate("k").await.unwrap();
        assert_eq!(store.get_local("k"), Some(None));
    }
}

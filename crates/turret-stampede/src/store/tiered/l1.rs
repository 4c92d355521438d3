//! The L1: bounded memory (moka, weighed by bytes) with a tag index kept in step with it,
//! and the epochs that keep an L2 answer read before an invalidation out of it.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use moka::{
    Expiry,
    notification::RemovalCause,
    ops::compute::{CompResult, Op},
    sync::Cache,
};

/// Key stripes of the epochs: an invalidation of one key blocks the fills of 1/64 of keys.
const STRIPES: usize = 64;

#[derive(Clone)]
pub(super) struct Slot {
    pub(super) bytes: Bytes,
    fence: u64,
    ttl: Duration,
    tags: Arc<[String]>,
    /// Which insertion this is: the tag index forgets a key only for the insertion it saw.
    generation: u64,
}

struct SlotTtl;

impl Expiry<String, Slot> for SlotTtl {
    fn expire_after_create(&self, _: &String, v: &Slot, _: std::time::Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Slot,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// tag → (key → the generation that indexed it). An entry exists only for a slot in the
/// cache (or one whose removal moka has not delivered yet), so it never outgrows the cache.
type TagIndex = Mutex<HashMap<String, HashMap<Arc<str>, u64>>>;

/// Invalidation epochs. A fill takes a [`Ticket`] before reading the L2 and is dropped when
/// any invalidation that could concern the key ran since: the key's stripe (key
/// invalidations) or the global epoch (tags, clears).
pub(super) struct Epochs {
    global: AtomicU64,
    stripes: [AtomicU64; STRIPES],
}

impl Default for Epochs {
    fn default() -> Self {
        Self {
            global: AtomicU64::new(0),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// What an L2 read saw of the epochs before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    global: u64,
    stripe: usize,
    at: u64,
}

pub(super) struct L1 {
    cache: Cache<String, Slot, foldhash::fast::RandomState>,
    tags: Arc<TagIndex>,
    epochs: Epochs,
    generation: AtomicU64,
    stripe_hasher: foldhash::fast::FixedState,
}

/// An entry to copy into the L1.
pub(super) struct Fill<'a> {
    pub(super) bytes: Bytes,
    pub(super) fence: u64,
    pub(super) ttl: Duration,
    pub(super) tags: &'a [String],
}

impl L1 {
    pub(super) fn new(max_bytes: u64) -> Self {
        let tags: Arc<TagIndex> = Arc::default();
        let index = tags.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, slot: &Slot| {
                let tags: usize = slot.tags.iter().map(|t| t.len() + 24).sum();
                u32::try_from(key.len() + slot.bytes.len() + tags + 96).unwrap_or(u32::MAX)
            })
            .expire_after(SlotTtl)
            .eviction_listener(move |key: Arc<String>, slot: Slot, _cause: RemovalCause| {
                forget(&index, &key, &slot);
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            cache,
            tags,
            epochs: Epochs::default(),
            generation: AtomicU64::new(0),
            stripe_hasher: foldhash::fast::FixedState::default(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Bytes> {
        self.cache.get(key).map(|s| s.bytes)
    }

    pub(super) fn holds(&self, key: &str) -> bool {
        self.cache.contains_key(key)
    }

    fn stripe(&self, key: &str) -> usize {
        // The modulo keeps the index in range whatever the hash.
        (self.stripe_hasher.hash_one(key) % STRIPES as u64) as usize
    }

    /// Taken before an L2 read whose answer may fill the L1.
    pub(super) fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe(key);
        Ticket {
            global: self.epochs.global.load(Ordering::SeqCst),
            stripe,
            at: self.epochs.stripes[stripe].load(Ordering::SeqCst),
        }
    }

    fn still(&self, ticket: Ticket) -> bool {
        self.epochs.global.load(Ordering::SeqCst) == ticket.global
            && self.epochs.stripes[ticket.stripe].load(Ordering::SeqCst) == ticket.at
    }

    /// Copies an L2 answer in, unless an invalidation that may concern `key` ran since
    /// `ticket` was taken (the answer may predate it). Whether it was copied.
    pub(super) fn fill(&self, key: &str, ticket: Ticket, fill: Fill<'_>) -> bool {
        if fill.ttl.is_zero() || !self.still(ticket) {
            return false;
        }
        self.insert(key, fill);
        if !self.still(ticket) {
            // An invalidation ran while inserting: it may have missed what was just put.
            self.cache.invalidate(key);
            return false;
        }
        true
    }

    /// Stores `fill` unless the L1 holds the key under a larger fence.
    pub(super) fn insert(&self, key: &str, fill: Fill<'_>) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            bytes: fill.bytes,
            fence: fill.fence,
            ttl: fill.ttl,
            tags: fill.tags.into(),
            generation,
        };
        let tags = slot.tags.clone();
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(e) if fill.fence != 0 && e.value().fence > fill.fence => Op::Nop,
                _ => Op::Put(slot),
            });
        if !matches!(result, CompResult::Unchanged(_)) && !tags.is_empty() {
            let key: Arc<str> = Arc::from(key);
            let mut index = lock(&self.tags);
            for tag in tags.iter() {
                index
                    .entry(tag.clone())
                    .or_default()
                    .insert(key.clone(), generation);
            }
        }
    }

    /// Drops `key` (and blocks fills of it that read the L2 before now).
    pub(super) fn invalidate(&self, key: &str) {
        self.epochs.stripes[self.stripe(key)].fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(key);
    }

    /// Drops every key stored with `tag` (and blocks fills that read the L2 before now).
    pub(super) fn invalidate_tag(&self, tag: &str) {
        self.epochs.global.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<Arc<str>> = lock(&self.tags)
            .get(tag)
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            // Only if the slot there now carries the tag (the key may have been re-put).
            self.cache
                .entry(key.to_string())
                .and_compute_with(|existing| match existing {
                    Some(e) if e.value().tags.iter().any(|t| t == tag) => Op::Remove,
                    _ => Op::Nop,
                });
        }
    }

    /// Drops everything (and blocks every fill that read the L2 before now).
    pub(super) fn clear(&self) {
        self.epochs.global.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }

    #[cfg(test)]
    pub(super) fn tag_index_len(&self) -> usize {
        self.cache.run_pending_tasks();
        lock(&self.tags).values().map(HashMap::len).sum()
    }

    pub(super) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub(super) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

fn lock(index: &TagIndex) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<Arc<str>, u64>>> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// A slot left the cache (replaced, removed, expired, evicted): its index entries go,
/// unless a newer insertion of the key has taken them over.
fn forget(index: &TagIndex, key: &str, slot: &Slot) {
    if slot.tags.is_empty() {
        return;
    }
    let mut index = lock(index);
    for tag in slot.tags.iter() {
        if let Some(keys) = index.get_mut(tag.as_str()) {
            if keys.get(key) == Some(&slot.generation) {
                keys.remove(key);
            }
            if keys.is_empty() {
                index.remove(tag.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill<'a>(bytes: &'static str, tags: &'a [String]) -> Fill<'a> {
        Fill {
            bytes: Bytes::from_static(bytes.as_bytes()),
            fence: 0,
            ttl: Duration::from_secs(30),
            tags,
        }
    }

    #[test]
    fn an_invalidation_between_the_l2_read_and_the_fill_keeps_the_old_value_out() {
        let l1 = L1::new(1 << 20);
        // A get takes its ticket, then reads the old value from the L2 …
        let ticket = l1.ticket("k");
        // … an invalidation of the key arrives meanwhile …
        l1.invalidate("k");
        // … and the fill of the old value is dropped.
        assert!(!l1.fill("k", ticket, fill("old", &[])));
        assert_eq!(l1.get("k"), None);
        // A read that started after the invalidation fills.
        let ticket = l1.ticket("k");
        assert!(l1.fill("k", ticket, fill("new", &[])));
        assert_eq!(l1.get("k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_tag_invalidation_or_a_clear_during_the_read_blocks_every_fill() {
        let l1 = L1::new(1 << 20);
        let ticket = l1.ticket("k");
        l1.invalidate_tag("t");
        assert!(!l1.fill("k", ticket, fill("old", &[])));
        let ticket = l1.ticket("k");
        l1.clear();
        assert!(!l1.fill("k", ticket, fill("old", &[])));
        assert_eq!(l1.get("k"), None);
        // Another key's invalidation in another stripe does not block this fill.
        let other = (0..1000)
            .map(|i| format!("o{i}"))
            .find(|o| l1.stripe(o) != l1.stripe("k"))
            .unwrap();
        let ticket = l1.ticket("k");
        l1.invalidate(&other);
        assert!(l1.fill("k", ticket, fill("v", &[])));
    }

    #[test]
    fn tag_invalidation_removes_only_tagged_keys_and_the_index_follows_the_cache() {
        let l1 = L1::new(1 << 20);
        let tags = [String::from("t")];
        for k in ["a", "b"] {
            l1.insert(k, fill("v", &tags));
        }
        l1.insert("c", fill("v", &[]));
        assert_eq!(l1.tag_index_len(), 2);
        // Re-putting a with no tag: the index forgets it, and invalidating t leaves it.
        l1.insert("a", fill("w", &[]));
        assert_eq!(l1.tag_index_len(), 1);
        l1.invalidate_tag("t");
        assert!(l1.holds("a") && !l1.holds("b") && l1.holds("c"));
        assert_eq!(l1.tag_index_len(), 0);
        l1.insert("d", fill("v", &tags));
        l1.clear();
        assert_eq!(l1.tag_index_len(), 0);
        assert!(!l1.holds("d"));
    }

    #[test]
    fn the_byte_bound_holds() {
        let l1 = L1::new(64 * 1024);
        let tags = [String::from("t")];
        for i in 0..2000 {
            l1.insert(
                &format!("key{i}"),
                fill("0123456789012345678901234567890123456789", &tags),
            );
        }
        l1.cache.run_pending_tasks();
        assert!(l1.weighted_size() <= 64 * 1024, "{}", l1.weighted_size());
        assert!(
            l1.entry_count() > 100,
            "it still holds entries: {}",
            l1.entry_count()
        );
        assert!(l1.tag_index_len() as u64 <= l1.entry_count() + 16);
    }

    #[test]
    fn a_smaller_fence_does_not_replace_a_larger_one() {
        let l1 = L1::new(1 << 20);
        let mut f = fill("new", &[]);
        f.fence = 9;
        l1.insert("k", f);
        let mut f = fill("old", &[]);
        f.fence = 3;
        l1.insert("k", f);
        assert_eq!(l1.get("k").as_deref(), Some(&b"new"[..]));
    }
}

//! The in-memory backend: sharded maps with a bound on keys.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState},
    sync::{Arc, Mutex},
};

use super::{Backend, Decide};
use crate::{
    Algorithm, Clock, Decision, MonotonicClock, Quota,
    algorithm::{fixed_window, gcra, sliding_log, sliding_window},
};

const SHARDS: usize = 64;

/// Default bound on the number of keys the memory backend keeps: 1,000,000.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// State of one key under one algorithm.
#[derive(Debug, Clone)]
pub(crate) enum KeyState {
    Gcra(Option<u64>),
    Fixed(Option<(u64, u64)>),
    Sliding(Option<(u64, u64, u64)>),
    Log(VecDeque<u64>),
}

impl KeyState {
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Gcra => KeyState::Gcra(None),
            Algorithm::FixedWindow => KeyState::Fixed(None),
            Algorithm::SlidingWindow => KeyState::Sliding(None),
            Algorithm::SlidingLog => KeyState::Log(VecDeque::new()),
        }
    }

    pub(crate) fn decide(&mut self, now: u64, quota: &Quota, cost: u32) -> Decision {
        match self {
            KeyState::Gcra(tat) => {
                let (d, new) = gcra(*tat, now, quota, cost);
                if new.is_some() {
                    *tat = new;
                }
                d
            }
            KeyState::Fixed(st) => {
                let (d, new) = fixed_window(*st, now, quota, cost);
                if new.is_some() {
                    *st = new;
                }
                d
            }
            KeyState::Sliding(st) => {
                let (d, new) = sliding_window(*st, now, quota, cost);
                if new.is_some() {
                    *st = new;
                }
                d
            }
            KeyState::Log(log) => sliding_log(log, now, quota, cost),
        }
    }

    /// Whether forgetting this key changes no future decision (its quota is whole again).
    fn is_idle(&self, now: u64, quota: &Quota) -> bool {
        let w = quota.period_micros();
        match self {
            KeyState::Gcra(tat) => tat.is_none_or(|t| t <= now),
            KeyState::Fixed(st) => st.is_none_or(|(i, _)| (i + 1) * w <= now),
            KeyState::Sliding(st) => st.is_none_or(|(i, _, _)| (i + 2) * w <= now),
            KeyState::Log(log) => log.back().is_none_or(|&t| t + w <= now),
        }
    }
}

/// A key with its hash, computed once per decision with the randomly seeded SipHash; the
/// shard's map reuses it instead of hashing again.
/// Policy and key live in one allocation, `policy NUL key` (a policy name is printable
/// ASCII), so a lookup touches one heap block.
struct MapKey {
    hash: u64,
    joined: Box<str>,
}

impl MapKey {
    fn new(hash: u64, policy: &str, key: &str) -> Self {
        let mut joined = String::with_capacity(policy.len() + 1 + key.len());
        joined.push_str(policy);
        joined.push('\0');
        joined.push_str(key);
        Self {
            hash,
            joined: joined.into_boxed_str(),
        }
    }
}

struct Entry {
    state: KeyState,
    quota: Quota,
}

type Map = HashMap<MapKey, Entry, BuildHasherDefault<PreHashed>>;
type Shard = Mutex<Map>;

/// Passes on the hash `KeyPair` already computed.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in so the map stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Rate-limit state in this process: the embedded default.
///
/// Keys live in 64 shards, each a mutex-guarded map; a decision locks one shard for the
/// duration of a few arithmetic operations, reading the clock inside the lock. The number of
/// keys is bounded ([`MemoryBackend::max_keys`], default 1,000,000): when a shard is full,
/// idle keys (whose quota is whole again, so forgetting them changes nothing) are swept
/// first; if the shard is still full, a random eighth of it is evicted — those keys start
/// over with a whole quota, which a flood of distinct keys can cause but not exploit for one
/// key. The map's hasher is randomly seeded, so client-chosen keys cannot collide on purpose.
#[derive(Clone)]
pub struct MemoryBackend {
    shards: Arc<[Shard]>,
    hasher: RandomState,
    max_per_shard: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("max_keys", &(self.max_per_shard * SHARDS))
            .field("keys", &self.len())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A backend on the real clock, bounded to [`DEFAULT_MAX_KEYS`].
    pub fn new() -> Self {
        Self::with_clock(MonotonicClock::default())
    }

    /// A backend on the given clock (a [`crate::FakeClock`] in tests).
    pub fn with_clock(clock: impl Clock) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            max_per_shard: DEFAULT_MAX_KEYS / SHARDS,
            clock: Arc::new(clock),
        }
    }

    /// Bounds the number of keys kept (rounded up to a multiple of 64).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_per_shard = max_keys.div_ceil(SHARDS).max(1);
        self
    }

    /// Keys currently kept.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no key is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides synchronously.
    pub fn decide_now(&self, policy: &str, key: &str, quota: &Quota, cost: u32) -> Decision {
        // A client may choose its key's length (an API key header): long keys are kept as
        // a digest, so memory per key is bounded whatever the client sends.
        let digest;
        let key = if key.len() > MAX_KEY_BYTES {
            digest = long_key_digest(key);
            digest.as_str()
        } else {
            key
        };
        let mut h = self.hasher.build_hasher();
        policy.hash(&mut h);
        key.hash(&mut h);
        let hash = h.finish();
        // The high bits choose the shard; the map's buckets use the low ones.
        let shard = &self.shards[((hash >> 58) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_micros();
        // Look up without allocating the owned key.
        let lookup = MapKeyRef { hash, policy, key };
        if let Some(entry) = map_get_mut(&mut map, &lookup) {
            if entry.quota != *quota {
                *entry = Entry {
                    state: KeyState::new(quota.get_algorithm()),
                    quota: *quota,
                };
            }
            return entry.state.decide(now, quota, cost);
        }
        if map.len() >= self.max_per_shard {
            make_room(&mut map, now, self.max_per_shard);
        }
        let mut state = KeyState::new(quota.get_algorithm());
        let decision = state.decide(now, quota, cost);
        if decision.allowed {
            map.insert(
                MapKey::new(hash, policy, key),
                Entry {
                    state,
                    quota: *quota,
                },
            );
        }
        decision
    }
}

/// Keys longer than this are kept as [`long_key_digest`].
const MAX_KEY_BYTES: usize = 128;

/// `#` and the first 128 bits of the key's SHA-256 in hex: 33 bytes whatever the key's
/// length. Distinct long keys share a quota only on a 128-bit SHA-256 prefix collision.
fn long_key_digest(key: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(1 + 32);
    out.push('#');
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

struct MapKeyRef<'a> {
    hash: u64,
    policy: &'a str,
    key: &'a str,
}

fn map_get_mut<'m>(map: &'m mut Map, k: &MapKeyRef<'_>) -> Option<&'m mut Entry> {
    map.get_mut(k as &dyn KeyPair)
}

// Lets the map be searched with borrowed `(&str, &str)`: both sides hash as their stored
// `hash` (see `Hash for dyn KeyPair`), and compare by their parts.
impl<'a> std::borrow::Borrow<dyn KeyPair + 'a> for MapKey {
    fn borrow(&self) -> &(dyn KeyPair + 'a) {
        self
    }
}

trait KeyPair {
    fn hash_value(&self) -> u64;
    fn parts(&self) -> (&str, &str);
}

impl KeyPair for MapKey {
    fn hash_value(&self) -> u64 {
        self.hash
    }

    fn parts(&self) -> (&str, &str) {
        self.joined.split_once('\0').unwrap_or((&self.joined, ""))
    }
}

impl KeyPair for MapKeyRef<'_> {
    fn hash_value(&self) -> u64 {
        self.hash
    }

    fn parts(&self) -> (&str, &str) {
        (self.policy, self.key)
    }
}

impl Hash for dyn KeyPair + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_value());
    }
}

impl Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for MapKey {}

impl PartialEq for dyn KeyPair + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyPair + '_ {}

fn make_room(map: &mut Map, now: u64, max: usize) {
    map.retain(|_, e| !e.state.is_idle(now, &e.quota));
    if map.len() >= max {
        let evict = (max / 8).max(1);
        let victims: Vec<_> = map
            .keys()
            .take(evict)
            .map(|k| (k.hash, k.joined.clone()))
            .collect();
        for (hash, joined) in victims {
            map.remove(&MapKey { hash, joined } as &dyn KeyPair);
        }
        metrics::counter!("turret_ratelimit_memory_evictions_total").increment(evict as u64);
    }
}

impl Backend for MemoryBackend {
    fn decide(&self, policy: &str, key: &str, quota: &Quota, cost: u32) -> Decide {
        Decide::Ready(Ok(self.decide_now(policy, key, quota, cost)))
    }

    fn is_local(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::FakeClock;

    #[test]
    fn long_keys_are_kept_as_digests_with_their_own_quota() {
        let backend = MemoryBackend::new();
        let quota = Quota::per_hour(1);
        let (a, b) = ("a".repeat(64 * 1024), "b".repeat(64 * 1024));
        assert!(backend.decide_now("p", &a, &quota, 1).allowed);
        assert!(!backend.decide_now("p", &a, &quota, 1).allowed);
        assert!(backend.decide_now("p", &b, &quota, 1).allowed);
        assert_eq!(long_key_digest(&a).len(), 33);
        assert_ne!(long_key_digest(&a), long_key_digest(&b));
        let kept: usize = backend
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap()
                    .keys()
                    .map(|k| k.joined.len())
                    .sum::<usize>()
            })
            .sum();
        assert!(kept < 100, "{kept} bytes of keys kept for two 64 KiB keys");
    }

    #[test]
    fn keys_and_policies_are_independent() {
        let b = MemoryBackend::with_clock(FakeClock::default());
        let q = Quota::per_minute(1);
        assert!(b.decide_now("p", "a", &q, 1).allowed);
        assert!(!b.decide_now("p", "a", &q, 1).allowed);
        assert!(b.decide_now("p", "b", &q, 1).allowed);
        assert!(b.decide_now("other", "a", &q, 1).allowed);
    }

    #[test]
    fn refusal_of_a_new_key_stores_nothing() {
        let b = MemoryBackend::with_clock(FakeClock::default());
        assert!(!b.decide_now("p", "a", &Quota::per_minute(0), 1).allowed);
        assert!(b.is_empty());
    }

    #[test]
    fn stays_bounded_when_flooded_and_keeps_active_keys_it_can() {
        let clock = FakeClock::default();
        let b = MemoryBackend::with_clock(clock.clone()).max_keys(6400);
        let q = Quota::per_second(1);
        for i in 0..100_000u32 {
            b.decide_now("p", &i.to_string(), &q, 1);
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(100));
            }
        }
        assert!(b.len() <= 6400, "{}", b.len());
    }

    #[test]
    fn idle_keys_are_swept_first() {
        let clock = FakeClock::default();
        let b = MemoryBackend::with_clock(clock.clone()).max_keys(64 * 4);
        let q = Quota::per_second(1);
        for i in 0..10_000u32 {
            b.decide_now("p", &i.to_string(), &q, 1);
            clock.advance(Duration::from_millis(1));
        }
        // Only keys of the last second can be non-idle.
        assert!(b.len() <= 64 * 4);
        // A key spent just now is still limited.
        assert!(!b.decide_now("p", "9999", &q, 1).allowed);
    }
}

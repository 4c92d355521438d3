//! The in-memory backend: sharded maps with a bound on keys.
//!
//! Memory per key is what the bound is about, so a map slot is kept to 48 bytes: the key's
//! [`Policy`] (name and quota, shared by the shard's keys under them) behind one pointer,
//! keys of up to [`INLINE_KEY_BYTES`] in place, and a 16-byte [`KeyState`]. A map keeps at
//! most 7/8 of its buckets full, and grows by doubling, so at the default bound (15,625 keys
//! a shard) each shard has 32,768 buckets: about 100 MiB for 1,000,000 short keys.

use std::{
    borrow::Cow,
    cell::Cell,
    collections::{HashMap, VecDeque},
    fmt,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState},
    num::{NonZeroU8, NonZeroU64},
    sync::{Arc, Mutex},
    time::Duration,
};

use smallvec::SmallVec;

use super::{Backend, Decide};
use crate::{
    Algorithm, Decision, MicrosClock, MonotonicClock, Outcome, Plan, Quota,
    algorithm::{fixed_window, gcra, sliding_log, sliding_window},
};

const SHARDS: usize = 64;

/// Default bound on the number of keys the memory backend keeps: 1,000,000.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// State of one key under one algorithm: 16 bytes whatever the algorithm.
#[derive(Debug, Clone)]
pub(crate) enum KeyState {
    /// GCRA, fixed window or sliding window: which one is the quota's algorithm (the backend
    /// starts a key over whenever its quota, and so its algorithm, changes).
    Counters(Counters),
    /// Sliding log: the admission times of the last window, oldest first. Boxed, so that
    /// keys under the other algorithms don't pay for a `VecDeque` (32 bytes).
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps every key's state at 16 bytes"
    )]
    Log(Box<VecDeque<u64>>),
}

/// The state of GCRA, fixed window and sliding window, in 16 bytes:
///
/// | algorithm | `window` | `a` | `b` |
/// |---|---|---|---|
/// | GCRA | [`Counters::NO_WINDOW`] | TAT, high 32 bits | TAT, low 32 bits |
/// | fixed window | window index + 1 | count | 0 |
/// | sliding window | window index + 1 | previous window's count | this window's count |
///
/// `window` is [`Counters::NO_WINDOW`] before the first admission. The packing loses
/// nothing: a window index is `now / period` with a period of at least 1 ms (1,000 µs), so it
/// is below 2^54 and `index + 1` never reaches `NO_WINDOW`; an admitted count never exceeds
/// the quota's count, a `u32`. GCRA's "no TAT yet" is kept as a TAT of 0, which decides alike
/// (GCRA uses `max(tat, now)`) and is idle alike.
///
/// `window` being non-zero leaves `KeyState` a value to tell `Log` by, so it needs no tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    window: NonZeroU64,
    a: u32,
    b: u32,
}

impl Counters {
    /// `window` before the first admission (and always, under GCRA).
    const NO_WINDOW: NonZeroU64 = NonZeroU64::MAX;
    /// Nothing admitted yet.
    const FRESH: Self = Self {
        window: Self::NO_WINDOW,
        a: 0,
        b: 0,
    };

    fn from_tat(tat: u64) -> Self {
        Self {
            window: Self::NO_WINDOW,
            a: (tat >> 32) as u32,
            b: tat as u32,
        }
    }

    fn tat(self) -> u64 {
        (u64::from(self.a) << 32) | u64::from(self.b)
    }

    fn from_window(index: u64, a: u64, b: u64) -> Self {
        Self {
            window: NonZeroU64::MIN.saturating_add(index),
            a: count(a),
            b: count(b),
        }
    }

    fn window(self) -> Option<u64> {
        (self.window != Self::NO_WINDOW).then(|| self.window.get() - 1)
    }

    fn fixed(self) -> Option<(u64, u64)> {
        self.window().map(|i| (i, u64::from(self.a)))
    }

    fn sliding(self) -> Option<(u64, u64, u64)> {
        self.window()
            .map(|i| (i, u64::from(self.a), u64::from(self.b)))
    }

    /// Decides under GCRA, fixed window or sliding window (`algorithm` is never the sliding
    /// log, which has its own state).
    fn decide(&mut self, algorithm: Algorithm, now: u64, quota: &Quota, cost: u32) -> Decision {
        match algorithm {
            Algorithm::Gcra => {
                let (d, new) = gcra(Some(self.tat()), now, quota, cost);
                if let Some(tat) = new {
                    *self = Self::from_tat(tat);
                }
                d
            }
            Algorithm::FixedWindow => {
                let (d, new) = fixed_window(self.fixed(), now, quota, cost);
                if let Some((i, c)) = new {
                    *self = Self::from_window(i, c, 0);
                }
                d
            }
            _ => {
                let (d, new) = sliding_window(self.sliding(), now, quota, cost);
                if let Some((i, p, c)) = new {
                    *self = Self::from_window(i, p, c);
                }
                d
            }
        }
    }

    fn is_idle(self, algorithm: Algorithm, now: u64, w: u64) -> bool {
        match algorithm {
            Algorithm::Gcra => self.tat() <= now,
            Algorithm::FixedWindow => self.window().is_none_or(|i| (i + 1) * w <= now),
            _ => self.window().is_none_or(|i| (i + 2) * w <= now),
        }
    }
}

/// An admitted count, at most the quota's count (a `u32`): saturates rather than wraps.
fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl KeyState {
    /// Nothing admitted yet, under GCRA, fixed window or sliding window.
    const FRESH: Self = KeyState::Counters(Counters::FRESH);

    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Gcra | Algorithm::FixedWindow | Algorithm::SlidingWindow => Self::FRESH,
            Algorithm::SlidingLog => KeyState::Log(Box::default()),
        }
    }

    pub(crate) fn decide(&mut self, now: u64, quota: &Quota, cost: u32) -> Decision {
        let algorithm = quota.algorithm();
        if matches!(self, KeyState::Log(_)) != (algorithm == Algorithm::SlidingLog) {
            // A state of another algorithm: never kept by the backend, which starts a key over
            // when its quota changes; do the same here.
            *self = KeyState::new(algorithm);
        }
        match self {
            KeyState::Counters(c) => c.decide(algorithm, now, quota, cost),
            KeyState::Log(log) => sliding_log(log, now, quota, cost),
        }
    }

    /// Whether forgetting this key changes no future decision (its quota is whole again).
    fn is_idle(&self, now: u64, quota: &Quota) -> bool {
        let w = quota.period_micros();
        match self {
            KeyState::Counters(c) => c.is_idle(quota.algorithm(), now, w),
            KeyState::Log(log) => log.back().is_none_or(|&t| t + w <= now),
        }
    }
}

/// Decides on the state kept in a map slot, in place.
fn decide_in(state: &Cell<KeyState>, now: u64, quota: &Quota, cost: u32) -> Decision {
    let mut st = state.replace(KeyState::FRESH);
    let decision = st.decide(now, quota, cost);
    state.set(st);
    decision
}

/// A policy's name and quota, and the backend's hash seed: kept once in a shard and shared
/// (by [`Arc`]) by the shard's keys decided under them.
struct Policy {
    name: Box<str>,
    /// The limit of the policy's plan: empty for the limit named as the policy itself.
    limit: Box<str>,
    quota: Quota,
    /// The seed the backend hashes keys with: a map that grows hashes its keys again.
    hasher: RandomState,
}

/// How many distinct policy-and-quota pairs a shard remembers to share among new keys. Keys
/// keep their own [`Policy`] alive, so forgetting one only costs a new `Arc` for later keys.
const POLICIES_PER_SHARD: usize = 16;

/// The shard's [`Policy`] for this name and quota: one of the few it remembers, or a new one.
fn policy_for(
    policies: &mut Vec<Arc<Policy>>,
    name: &str,
    limit: &str,
    quota: &Quota,
    hasher: &RandomState,
) -> Arc<Policy> {
    if let Some(p) = policies
        .iter()
        .find(|p| p.quota == *quota && *p.name == *name && *p.limit == *limit)
    {
        return Arc::clone(p);
    }
    if policies.len() >= POLICIES_PER_SHARD {
        // Forget those no key uses any more; if all are in use, the oldest.
        policies.retain(|p| Arc::strong_count(p) > 1);
        if policies.len() >= POLICIES_PER_SHARD {
            policies.remove(0);
        }
    }
    let p = Arc::new(Policy {
        name: name.into(),
        limit: limit.into(),
        quota: *quota,
        hasher: hasher.clone(),
    });
    policies.push(Arc::clone(&p));
    p
}

/// Keys of up to this many bytes are kept in the map slot itself (an IPv4 address, a number,
/// a short token); longer ones, up to [`MAX_KEY_BYTES`], in a heap block of their own.
const INLINE_KEY_BYTES: usize = 23;

/// A key's bytes, 24 bytes either way. The inline length is kept plus one, so that its byte is
/// never 0: that value tells `Heap`, which needs no tag of its own.
enum KeyBytes {
    Inline(NonZeroU8, [u8; INLINE_KEY_BYTES]),
    Heap(Box<[u8]>),
}

impl KeyBytes {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            KeyBytes::Inline(NonZeroU8::MIN.saturating_add(key.len() as u8), bytes)
        } else {
            KeyBytes::Heap(key.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            KeyBytes::Inline(len, bytes) => &bytes[..usize::from(len.get() - 1)],
            KeyBytes::Heap(bytes) => bytes,
        }
    }
}

/// A key kept in a shard's map: its policy and its bytes (32 bytes; with its [`KeyState`], a
/// slot is 48). The hash is not kept: a decision computes it once, with the randomly seeded
/// SipHash, and the map reuses it ([`MapKeyRef`]); the map computes it again from the
/// policy's seed only when it inserts a key or grows.
struct MapKey {
    policy: Arc<Policy>,
    key: KeyBytes,
}

/// The map's value: the key's state, changed in place through a shared reference, because
/// the lookup that finds it must also see the key's quota (in [`MapKey`]).
type Map = HashMap<MapKey, Cell<KeyState>, BuildHasherDefault<PreHashed>>;

/// One shard: its keys, and the policies they share.
#[derive(Default)]
struct ShardState {
    map: Map,
    policies: Vec<Arc<Policy>>,
}

type Shard = Mutex<ShardState>;

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

/// The seeded hash of a policy, limit and key. All are UTF-8, so none contains the byte 0xff
/// that ends each: distinct triples hash distinct byte strings.
///
/// The three parts and their ends are hashed as one byte string: SipHash takes one `write`
/// of a contiguous buffer in about half the time of six short ones (the decision's hash was
/// a quarter of its time). The bytes hashed are the same either way.
fn key_hash(hasher: &RandomState, policy: &str, limit: &str, key: &[u8]) -> u64 {
    /// Keys up to `MAX_KEY_BYTES` with short policy and limit names fit on the stack.
    const STACK: usize = 192;
    let mut h = hasher.build_hasher();
    let len = policy.len() + limit.len() + key.len() + 3;
    if len <= STACK {
        let mut buf = [0u8; STACK];
        let mut at = 0;
        for part in [policy.as_bytes(), limit.as_bytes(), key] {
            buf[at..at + part.len()].copy_from_slice(part);
            buf[at + part.len()] = 0xff;
            at += part.len() + 1;
        }
        h.write(&buf[..at]);
    } else {
        h.write(policy.as_bytes());
        h.write_u8(0xff);
        h.write(limit.as_bytes());
        h.write_u8(0xff);
        h.write(key);
        h.write_u8(0xff);
    }
    h.finish()
}

/// The shard of a key's hash (of its policy and key, limit part empty, so that every limit
/// of a plan is decided under one lock): bits 32 to 37. The map takes a bucket from the low bits and
/// compares the top 7 bits first, so those must not be the same for all keys of a shard.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
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
///
/// A key of up to 23 bytes (an IPv4 address) under GCRA or a window costs about 100 bytes at
/// the default bound; a longer one (up to 128 bytes, then kept as a 33-byte digest) also
/// takes a heap block of its length.
#[derive(Clone)]
pub struct MemoryBackend {
    shards: Arc<[Shard]>,
    hasher: RandomState,
    max_per_shard: usize,
    clock: Arc<dyn MicrosClock>,
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

    /// A backend on the given clock (a [`crate::FakeMicrosClock`] in tests).
    pub fn with_clock(clock: impl MicrosClock) -> Self {
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
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    /// Whether no key is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides one quota synchronously (`policy`'s own limit).
    pub fn decide_now(&self, policy: &str, key: &str, quota: &Quota, cost: u32) -> Decision {
        self.decide_one(policy, key, "", quota, cost)
    }

    /// One limit, without delay: the path of most decisions, with nothing to put back.
    fn decide_one(
        &self,
        policy: &str,
        key: &str,
        part: &str,
        quota: &Quota,
        cost: u32,
    ) -> Decision {
        // A client may choose its key's length (an API key header): long keys are kept as
        // a digest, so memory per key is bounded whatever the client sends.
        let digest;
        let key = if key.len() > MAX_KEY_BYTES {
            digest = long_key_digest(key);
            digest.as_str()
        } else {
            key
        };
        let shard_hash = key_hash(&self.hasher, policy, "", key.as_bytes());
        let hash = if part.is_empty() {
            shard_hash
        } else {
            key_hash(&self.hasher, policy, part, key.as_bytes())
        };
        let mut shard = self.shards[shard_of(shard_hash)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ShardState { map, policies } = &mut *shard;
        let now = self.clock.now_micros();
        // Look up without allocating the owned key.
        let lookup = MapKeyRef {
            hash,
            policy,
            limit: part,
            key: key.as_bytes(),
        };
        let lookup = &lookup as &dyn KeyPair;
        match map.get_key_value(lookup) {
            Some((kept, state)) if kept.policy.quota == *quota => {
                return decide_in(state, now, quota, cost);
            }
            Some((kept, _)) => {
                // Its quota changed: under the same algorithm its state carries over (as on
                // Redis); under another it starts over, replacing the old state if admitted.
                let carry = kept.policy.quota.algorithm() == quota.algorithm();
                let mut fresh = KeyState::new(quota.algorithm());
                let decision = if carry {
                    None
                } else {
                    Some(fresh.decide(now, quota, cost))
                };
                if let Some(d) = decision
                    && !d.allowed
                {
                    return d;
                }
                if let Some((mut kept, cell)) = map.remove_entry(lookup) {
                    let (state, decision) = match decision {
                        Some(d) => (fresh, d),
                        None => {
                            let mut state = cell.into_inner();
                            let d = state.decide(now, quota, cost);
                            (state, d)
                        }
                    };
                    kept.policy = policy_for(policies, policy, part, quota, &self.hasher);
                    map.insert(kept, Cell::new(state));
                    return decision;
                }
            }
            None => {}
        }
        if map.len() >= self.max_per_shard {
            make_room(map, now, self.max_per_shard);
        }
        let mut state = KeyState::new(quota.algorithm());
        let decision = state.decide(now, quota, cost);
        if decision.allowed {
            let kept = MapKey {
                policy: policy_for(policies, policy, part, quota, &self.hasher),
                key: KeyBytes::new(key.as_bytes()),
            };
            map.insert(kept, Cell::new(state));
        }
        decision
    }

    /// Decides every quota of `plan` synchronously, all-or-nothing (see
    /// [`Backend::decide`]).
    pub fn decide_plan_now(
        &self,
        policy: &str,
        key: &str,
        plan: &Plan,
        cost: u32,
        max_delay: Duration,
    ) -> Outcome {
        let max_delay_us = if plan.is_all_gcra() {
            u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX)
        } else {
            0
        };
        if let ([l], 0) = (plan.limits(), max_delay_us) {
            return Outcome::single(self.decide_one(policy, key, l.part(policy), l.quota(), cost));
        }
        let limits: SmallVec<[LimitRef<'_>; 3]> = plan
            .limits()
            .iter()
            .map(|l| LimitRef {
                part: l.part(policy),
                quota: l.quota(),
            })
            .collect();
        let max_delay = if plan.is_all_gcra() {
            u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX)
        } else {
            0
        };
        self.decide_limits(policy, key, &limits, cost, max_delay)
    }

    /// The shard and the hashes of `key`'s limits, `key` bounded as it is kept.
    fn locate<'k>(&self, policy: &str, key: &'k str, limits: &[LimitRef<'_>]) -> Located<'k> {
        // A client may choose its key's length (an API key header): long keys are kept as
        // a digest, so memory per key is bounded whatever the client sends.
        let key: Cow<'k, str> = if key.len() > MAX_KEY_BYTES {
            Cow::Owned(long_key_digest(key))
        } else {
            Cow::Borrowed(key)
        };
        let shard_hash = key_hash(&self.hasher, policy, "", key.as_bytes());
        let hashes = limits
            .iter()
            .map(|l| {
                if l.part.is_empty() {
                    shard_hash
                } else {
                    key_hash(&self.hasher, policy, l.part, key.as_bytes())
                }
            })
            .collect();
        Located {
            shard: shard_of(shard_hash),
            key,
            hashes,
        }
    }

    /// The decision over `limits`, all-or-nothing, under the lock of the key's shard.
    fn decide_limits(
        &self,
        policy: &str,
        key: &str,
        limits: &[LimitRef<'_>],
        cost: u32,
        max_delay_us: u64,
    ) -> Outcome {
        let Located { shard, key, hashes } = self.locate(policy, key, limits);
        let mut shard = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        let ShardState { map, policies } = &mut *shard;
        let now = self.clock.now_micros();
        let lookup = |i: usize| MapKeyRef {
            hash: hashes[i],
            policy,
            limit: limits[i].part,
            key: key.as_bytes(),
        };
        // Each limit's state: kept under its quota (in place), or new (absent, or kept
        // under another quota: it starts over).
        let mut states: SmallVec<[(KeyState, Kept); 3]> = SmallVec::new();
        let mut cells: SmallVec<[Option<&Cell<KeyState>>; 3]> = SmallVec::new();
        for (i, l) in limits.iter().enumerate() {
            let r = lookup(i);
            let (state, kept, cell) = match map.get_key_value(&r as &dyn KeyPair) {
                Some((k, cell)) if k.policy.quota == *l.quota => {
                    (cell.replace(KeyState::FRESH), Kept::Same, Some(cell))
                }
                // A quota changed at run time: the state carries over (as on Redis, where
                // the quota travels with each call), decided under the new quota.
                Some((k, cell)) if k.policy.quota.algorithm() == l.quota.algorithm() => {
                    (cell.replace(KeyState::FRESH), Kept::Changed, Some(cell))
                }
                Some(_) => (KeyState::new(l.quota.algorithm()), Kept::Other, None),
                None => (KeyState::new(l.quota.algorithm()), Kept::No, None),
            };
            states.push((state, kept));
            cells.push(cell);
        }
        let outcome = decide_states(&mut states, limits, now, cost, max_delay_us);
        let admitted = outcome.allowed();
        let mut new = 0;
        let mut changed = false;
        for ((state, kept), cell) in states.iter_mut().zip(cells) {
            match cell {
                Some(cell) => cell.set(std::mem::replace(state, KeyState::FRESH)),
                None => new += usize::from(admitted),
            }
            changed |= matches!(kept, Kept::Changed);
        }
        if new == 0 && !changed {
            return outcome;
        }
        if map.len() + new > self.max_per_shard {
            make_room(map, now, self.max_per_shard);
        }
        for (i, (state, kept)) in states.into_iter().enumerate() {
            let r = lookup(i);
            let (entry, state) = match kept {
                Kept::Same => continue,
                // Kept under the new quota, with the state just decided.
                Kept::Changed => match map.remove_entry(&r as &dyn KeyPair) {
                    Some((k, cell)) => (Some(k), cell.into_inner()),
                    None => continue,
                },
                _ if !admitted => continue,
                Kept::Other => (map.remove_entry(&r as &dyn KeyPair).map(|(k, _)| k), state),
                Kept::No => (None, state),
            };
            let mut entry = entry.unwrap_or_else(|| MapKey {
                policy: policy_for(policies, policy, r.limit, limits[i].quota, &self.hasher),
                key: KeyBytes::new(key.as_bytes()),
            });
            if entry.policy.quota != *limits[i].quota {
                entry.policy = policy_for(policies, policy, r.limit, limits[i].quota, &self.hasher);
            }
            map.insert(entry, Cell::new(state));
        }
        outcome
    }

    /// Gives back a delayed admission's turn on every GCRA limit of `plan`.
    pub(crate) fn refund_now(&self, policy: &str, key: &str, plan: &Plan, cost: u32) {
        let limits: SmallVec<[LimitRef<'_>; 3]> = plan
            .limits()
            .iter()
            .map(|l| LimitRef {
                part: l.part(policy),
                quota: l.quota(),
            })
            .collect();
        let Located { shard, key, hashes } = self.locate(policy, key, &limits);
        let shard = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        for (i, l) in limits.iter().enumerate() {
            if l.quota.algorithm() != Algorithm::Gcra {
                continue;
            }
            let r = MapKeyRef {
                hash: hashes[i],
                policy,
                limit: l.part,
                key: key.as_bytes(),
            };
            if let Some((k, cell)) = shard.map.get_key_value(&r as &dyn KeyPair)
                && k.policy.quota == *l.quota
                && let KeyState::Counters(c) = cell.replace(KeyState::FRESH)
            {
                let back = l
                    .quota
                    .emission_interval_micros()
                    .saturating_mul(u64::from(cost));
                cell.set(KeyState::Counters(Counters::from_tat(
                    c.tat().saturating_sub(back),
                )));
            }
        }
    }
}

/// One limit being decided: its part of the key (empty for the policy's own) and quota.
#[derive(Clone, Copy)]
struct LimitRef<'a> {
    part: &'a str,
    quota: &'a Quota,
}

/// Where a key's limits are: its shard, the key as kept, and each limit's hash.
struct Located<'k> {
    shard: usize,
    key: Cow<'k, str>,
    hashes: SmallVec<[u64; 3]>,
}

/// Whether a limit's state was in the map under the quota deciding it.
#[derive(Clone, Copy)]
enum Kept {
    /// Kept under this quota.
    Same,
    /// Kept under another quota of the same algorithm: the state carries over.
    Changed,
    /// Kept under another algorithm: starts over.
    Other,
    /// Not kept.
    No,
}

/// Decides a request over every limit's state, all-or-nothing: when a limit refuses, the
/// others are put back as they were, and report what they have left without the request.
/// In delay mode (`max_delay_us` above zero, every limit GCRA), a request each limit would
/// admit within the delay is admitted at the latest of their times, with its turn taken.
fn decide_states(
    states: &mut [(KeyState, Kept)],
    limits: &[LimitRef<'_>],
    now: u64,
    cost: u32,
    max_delay_us: u64,
) -> Outcome {
    if max_delay_us > 0
        && let Some(outcome) = delayed(states, limits, now, cost, max_delay_us)
    {
        return outcome;
    }
    let mut decisions: SmallVec<[Decision; 3]> = SmallVec::new();
    let mut undo: SmallVec<[Undo; 3]> = SmallVec::new();
    for ((state, _), l) in states.iter_mut().zip(limits) {
        undo.push(match state {
            KeyState::Counters(c) => Undo::Counters(*c),
            KeyState::Log(_) => Undo::Log,
        });
        decisions.push(state.decide(now, l.quota, cost));
    }
    if !decisions.iter().all(|d| d.allowed) {
        for ((((state, _), l), d), u) in
            states.iter_mut().zip(limits).zip(&mut decisions).zip(&undo)
        {
            if !d.allowed {
                continue;
            }
            match u {
                Undo::Counters(before) => *state = KeyState::Counters(*before),
                Undo::Log => {
                    if let KeyState::Log(log) = state {
                        for _ in 0..cost {
                            log.pop_back();
                        }
                    }
                }
            }
            // What is left without the request: the same state decided at no cost.
            *d = state.decide(now, l.quota, 0);
        }
    }
    Outcome::new(decisions, Duration::ZERO)
}

/// A limit's state before a request, to put back when another limit refuses it.
enum Undo {
    /// The counters as they were.
    Counters(Counters),
    /// A log: the request's entries are the last ones.
    Log,
}

/// Delay mode: `None` when some limit cannot admit the request within `max_delay_us`.
fn delayed(
    states: &mut [(KeyState, Kept)],
    limits: &[LimitRef<'_>],
    now: u64,
    cost: u32,
    max_delay_us: u64,
) -> Option<Outcome> {
    let mut wait = 0u64;
    for ((state, _), l) in states.iter().zip(limits) {
        let KeyState::Counters(c) = state else {
            return None;
        };
        let (d, _) = gcra(Some(c.tat()), now, l.quota, cost);
        if !d.allowed {
            wait = wait.max(u64::try_from(d.retry_after?.as_micros()).ok()?);
        }
    }
    if wait > max_delay_us {
        return None;
    }
    let at = now.checked_add(wait)?;
    let mut decisions: SmallVec<[Decision; 3]> = SmallVec::new();
    for ((state, _), l) in states.iter().zip(limits) {
        let KeyState::Counters(c) = state else {
            return None;
        };
        let (d, new) = gcra(Some(c.tat()), at, l.quota, cost);
        new?;
        decisions.push(d);
    }
    for (((state, _), l), d) in states.iter_mut().zip(limits).zip(decisions.iter_mut()) {
        let KeyState::Counters(c) = state else {
            return None;
        };
        if let (_, Some(tat)) = gcra(Some(c.tat()), at, l.quota, cost) {
            *c = Counters::from_tat(tat);
        }
        d.reset_after += Duration::from_micros(wait);
    }
    Some(Outcome::new(decisions, Duration::from_micros(wait)))
}

/// Keys longer than this are kept as [`long_key_digest`].
pub(crate) const MAX_KEY_BYTES: usize = 128;

/// `#` and the first 128 bits of the key's SHA-256 in hex: 33 bytes whatever the key's
/// length. Distinct long keys share a quota only on a 128-bit SHA-256 prefix collision.
pub(crate) fn long_key_digest(key: &str) -> String {
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

/// A key being decided, with its hash.
struct MapKeyRef<'a> {
    hash: u64,
    policy: &'a str,
    limit: &'a str,
    key: &'a [u8],
}

// Lets the map be searched with a borrowed policy and key: both sides hash as
// `key_hash(policy, key)` (see `Hash for dyn KeyPair`), and compare by their parts.
impl<'a> std::borrow::Borrow<dyn KeyPair + 'a> for MapKey {
    fn borrow(&self) -> &(dyn KeyPair + 'a) {
        self
    }
}

trait KeyPair {
    fn hash_value(&self) -> u64;
    fn policy(&self) -> &str;
    fn limit(&self) -> &str;
    fn key(&self) -> &[u8];
}

impl KeyPair for MapKey {
    fn hash_value(&self) -> u64 {
        key_hash(
            &self.policy.hasher,
            &self.policy.name,
            &self.policy.limit,
            self.key.as_bytes(),
        )
    }

    fn policy(&self) -> &str {
        &self.policy.name
    }

    fn limit(&self) -> &str {
        &self.policy.limit
    }

    fn key(&self) -> &[u8] {
        self.key.as_bytes()
    }
}

impl KeyPair for MapKeyRef<'_> {
    fn hash_value(&self) -> u64 {
        self.hash
    }

    fn policy(&self) -> &str {
        self.policy
    }

    fn limit(&self) -> &str {
        self.limit
    }

    fn key(&self) -> &[u8] {
        self.key
    }
}

impl Hash for dyn KeyPair + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_value());
    }
}

impl Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_value());
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyPair) == (other as &dyn KeyPair)
    }
}

impl Eq for MapKey {}

impl PartialEq for dyn KeyPair + '_ {
    fn eq(&self, other: &Self) -> bool {
        // The key first: it is in the map slot, the policy behind a pointer.
        same(self.key(), other.key())
            && same(self.policy().as_bytes(), other.policy().as_bytes())
            && same(self.limit().as_bytes(), other.limit().as_bytes())
    }
}

impl Eq for dyn KeyPair + '_ {}

/// Byte equality that never calls `memcmp` for empty slices (the empty limit part of every
/// policy's own key): glibc's AVX-512 `memcmp` was measured at ~250 ns for a zero length on
/// the benchmark machine, against ~8 ns for 8 bytes.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

fn make_room(map: &mut Map, now: u64, max: usize) {
    map.retain(|k, state| !state.get_mut().is_idle(now, &k.policy.quota));
    if map.len() >= max {
        // The first eighth in the map's order, which is its hashes' (randomly seeded) order.
        let evict = (max / 8).max(1);
        let mut seen = 0;
        map.retain(|_, _| {
            seen += 1;
            seen > evict
        });
        metrics::counter!("turret_ratelimit_memory_evictions_total").increment(evict as u64);
    }
}

impl Backend for MemoryBackend {
    fn decide(
        &self,
        policy: &str,
        key: &str,
        plan: &Plan,
        cost: u32,
        max_delay: Duration,
    ) -> Decide {
        Decide::Ready(Ok(self.decide_plan_now(policy, key, plan, cost, max_delay)))
    }

    fn refund(&self, policy: &str, key: &str, plan: &Plan, cost: u32) {
        self.refund_now(policy, key, plan, cost);
    }

    fn is_local(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeMicrosClock;

    #[test]
    fn the_key_hash_is_that_of_the_parts_and_their_ends_whatever_their_length() {
        let hasher = RandomState::new();
        let streamed = |policy: &str, limit: &str, key: &[u8]| {
            let mut h = hasher.build_hasher();
            for part in [policy.as_bytes(), limit.as_bytes(), key] {
                h.write(part);
                h.write_u8(0xff);
            }
            h.finish()
        };
        let long = "k".repeat(300);
        for (policy, limit, key) in [
            ("default", "", "10.0.0.1"),
            ("api", "daily", "10.0.0.1"),
            ("", "", ""),
            ("default", "", &long[..182]), // 192 bytes: the last that fit on the stack
            ("default", "", &long[..183]),
            ("default", "burst", &long),
        ] {
            assert_eq!(
                key_hash(&hasher, policy, limit, key.as_bytes()),
                streamed(policy, limit, key.as_bytes()),
                "{policy}/{limit}/{} bytes",
                key.len()
            );
        }
        // The ends keep the parts apart: moving a byte from one part to the next changes it.
        assert_ne!(
            key_hash(&hasher, "ab", "", b"c"),
            key_hash(&hasher, "a", "", b"bc")
        );
    }

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
                    .map
                    .keys()
                    .map(|k| k.policy.name.len() + k.key.as_bytes().len())
                    .sum::<usize>()
            })
            .sum();
        assert!(kept < 100, "{kept} bytes of keys kept for two 64 KiB keys");
    }

    #[test]
    fn keys_and_policies_are_independent() {
        let b = MemoryBackend::with_clock(FakeMicrosClock::default());
        let q = Quota::per_minute(1);
        assert!(b.decide_now("p", "a", &q, 1).allowed);
        assert!(!b.decide_now("p", "a", &q, 1).allowed);
        assert!(b.decide_now("p", "b", &q, 1).allowed);
        assert!(b.decide_now("other", "a", &q, 1).allowed);
    }

    #[test]
    fn refusal_of_a_new_key_stores_nothing() {
        let b = MemoryBackend::with_clock(FakeMicrosClock::default());
        assert!(!b.decide_now("p", "a", &Quota::per_minute(0), 1).allowed);
        assert!(b.is_empty());
    }

    #[test]
    fn stays_bounded_when_flooded_and_keeps_active_keys_it_can() {
        let clock = FakeMicrosClock::default();
        let b = MemoryBackend::with_clock(clock.clone()).max_keys(6400);
        let q = Quota::per_second(1);
        let start = clock.now_micros();
        // Key `i` is decided at `start` + 100 ms × ⌈i / 1000⌉.
        let decided_at = |i: u64| start + 100_000 * i.div_ceil(1000);
        for i in 0..100_000u32 {
            assert!(b.decide_now("p", &i.to_string(), &q, 1).allowed, "key {i}");
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(100));
            }
        }
        assert!(b.len() <= 6400, "{}", b.len());

        // The last second's 10,000 keys are all in use and more than fit. A full shard sweeps
        // only idle keys and then evicts an eighth, so at least 7/8 of what the backend can
        // hold are keys in use, each with its own state: admitted once at its time, so its
        // TAT is that time + 1 s, and it is refused until then. A backend that stores nothing,
        // keeps the wrong state, or empties a full shard fails here.
        let now = clock.now_micros();
        let mut active = 0;
        for shard in b.shards.iter() {
            let mut shard = shard.lock().unwrap();
            for (k, state) in shard.map.iter_mut() {
                let i: u64 = std::str::from_utf8(k.key.as_bytes())
                    .unwrap()
                    .parse()
                    .unwrap();
                let state = state.get_mut();
                let KeyState::Counters(c) = *state else {
                    panic!("key {i}: not a GCRA state")
                };
                assert_eq!(c.tat(), decided_at(i) + 1_000_000, "key {i}");
                if !state.is_idle(now, &q) {
                    active += 1;
                    let d = state.clone().decide(now, &q, 1);
                    assert!(!d.allowed, "key {i} in use but admitted again");
                    assert_eq!(d.remaining, 0, "key {i}");
                }
            }
        }
        assert!(active >= 6400 * 7 / 8, "{active} keys in use kept of 6,400");
        // The last key is kept and refused, and the refusal writes nothing.
        let len = b.len();
        assert!(!b.decide_now("p", "99999", &q, 1).allowed);
        assert_eq!(b.len(), len);
    }

    #[test]
    fn idle_keys_are_swept_first() {
        let clock = FakeMicrosClock::default();
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

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_key_takes_a_48_byte_slot() {
        use std::mem::size_of;
        assert_eq!(size_of::<KeyState>(), 16);
        assert_eq!(size_of::<KeyBytes>(), 24);
        assert_eq!(size_of::<MapKey>(), 32);
        assert_eq!(size_of::<(MapKey, Cell<KeyState>)>(), 48);
    }

    #[test]
    fn keys_at_the_inline_limit_stay_distinct() {
        let at = "k".repeat(INLINE_KEY_BYTES);
        let over = "k".repeat(INLINE_KEY_BYTES + 1);
        let under = "k".repeat(INLINE_KEY_BYTES - 1);
        assert!(matches!(KeyBytes::new(at.as_bytes()), KeyBytes::Inline(..)));
        assert!(matches!(KeyBytes::new(over.as_bytes()), KeyBytes::Heap(_)));
        let max = "m".repeat(MAX_KEY_BYTES);
        for key in ["", "a", "a\0", &under, &at, &over, &max] {
            assert_eq!(KeyBytes::new(key.as_bytes()).as_bytes(), key.as_bytes());
        }
        let b = MemoryBackend::with_clock(FakeMicrosClock::default());
        let q = Quota::per_hour(1);
        let keys = ["", "\0", &under, &at, &over, &max];
        for key in keys {
            assert!(b.decide_now("p", key, &q, 1).allowed, "{key:?}");
        }
        for key in keys {
            assert!(!b.decide_now("p", key, &q, 1).allowed, "{key:?}");
        }
        assert_eq!(b.len(), keys.len());
    }

    #[test]
    fn a_changed_quota_keeps_the_state_of_its_algorithm() {
        let b = MemoryBackend::with_clock(FakeMicrosClock::default());
        let (one, two) = (Quota::per_minute(1), Quota::per_minute(2));
        assert!(b.decide_now("p", "a", &one, 1).allowed);
        assert!(!b.decide_now("p", "a", &one, 1).allowed);
        // Raised at run time: the minute just spent still counts (its TAT carries over), so
        // 2 a minute admits one more now (a 30 s turn), not a whole new quota.
        let d = b.decide_now("p", "a", &two, 1);
        assert!(!d.allowed, "{d:?}");
        assert_eq!(d.retry_after, Some(std::time::Duration::from_secs(30)));
        // At 10 a minute the spent minute is its whole tolerance: a turn is 6 s away.
        let d = b.decide_now("p", "a", &Quota::per_minute(10), 1);
        assert_eq!(d.retry_after, Some(std::time::Duration::from_secs(6)));
        assert_eq!(b.len(), 1);
        // Another algorithm has no state to carry: the key starts over under it.
        let fixed = Quota::per_minute(1).with_algorithm(Algorithm::FixedWindow);
        assert!(b.decide_now("p", "a", &fixed, 1).allowed);
        assert!(!b.decide_now("p", "a", &fixed, 1).allowed);
        assert_eq!(b.len(), 1);
        // Refused under a quota of yet another algorithm, the key keeps its state.
        let zero = Quota::per_minute(0).with_algorithm(Algorithm::SlidingWindow);
        assert!(!b.decide_now("p", "a", &zero, 1).allowed);
        assert!(!b.decide_now("p", "a", &fixed, 1).allowed);
    }

    #[test]
    fn keys_share_their_policy() {
        let b = MemoryBackend::with_clock(FakeMicrosClock::default());
        let q = Quota::per_minute(10);
        for i in 0..1000u32 {
            b.decide_now("p", &i.to_string(), &q, 1);
            b.decide_now("other", &i.to_string(), &q, 1);
        }
        assert_eq!(b.len(), 2000);
        for shard in b.shards.iter() {
            let shard = shard.lock().unwrap();
            assert_eq!(shard.policies.len(), 2);
            for k in shard.map.keys() {
                assert!(shard.policies.iter().any(|p| Arc::ptr_eq(p, &k.policy)));
            }
        }
        // Many quotas for one policy: the shard remembers a few, each key keeps its own.
        for i in 0..1000u32 {
            b.decide_now("p", "x", &Quota::per_minute(i + 1), 1);
            b.decide_now("p", &format!("y{i}"), &Quota::per_minute(i + 1), 1);
        }
        for shard in b.shards.iter() {
            assert!(shard.lock().unwrap().policies.len() <= POLICIES_PER_SHARD);
        }
        // "x" was decided under each quota in turn, its state carried over: 1,000 turns of
        // 60 ms are 60 s, a whole minute of 1,000 a minute's tolerance, spent.
        let d = b.decide_now("p", "x", &Quota::per_minute(1000), 1);
        assert!(!d.allowed, "{d:?}");
        assert!(!b.decide_now("p", "y0", &Quota::per_minute(1), 1).allowed);
    }

    /// The state as it was kept before [`Counters`]: the algorithms' own types.
    #[derive(Clone)]
    enum Plain {
        Gcra(Option<u64>),
        Fixed(Option<(u64, u64)>),
        Sliding(Option<(u64, u64, u64)>),
        Log(VecDeque<u64>),
    }

    impl Plain {
        fn new(algorithm: Algorithm) -> Self {
            match algorithm {
                Algorithm::Gcra => Plain::Gcra(None),
                Algorithm::FixedWindow => Plain::Fixed(None),
                Algorithm::SlidingWindow => Plain::Sliding(None),
                Algorithm::SlidingLog => Plain::Log(VecDeque::new()),
            }
        }

        fn decide(&mut self, now: u64, quota: &Quota, cost: u32) -> Decision {
            fn keep<T>(d: (Decision, Option<T>), st: &mut Option<T>) -> Decision {
                if d.1.is_some() {
                    *st = d.1;
                }
                d.0
            }
            match self {
                Plain::Gcra(st) => keep(gcra(*st, now, quota, cost), st),
                Plain::Fixed(st) => keep(fixed_window(*st, now, quota, cost), st),
                Plain::Sliding(st) => keep(sliding_window(*st, now, quota, cost), st),
                Plain::Log(log) => sliding_log(log, now, quota, cost),
            }
        }

        fn is_idle(&self, now: u64, quota: &Quota) -> bool {
            let w = quota.period_micros();
            match self {
                Plain::Gcra(tat) => tat.is_none_or(|t| t <= now),
                Plain::Fixed(st) => st.is_none_or(|(i, _)| (i + 1) * w <= now),
                Plain::Sliding(st) => st.is_none_or(|(i, _, _)| (i + 2) * w <= now),
                Plain::Log(log) => log.back().is_none_or(|&t| t + w <= now),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn packed_state_decides_as_the_plain_one(
            alg in proptest::sample::select(vec![
                Algorithm::Gcra,
                Algorithm::FixedWindow,
                Algorithm::SlidingWindow,
                Algorithm::SlidingLog,
            ]),
            count in 0u32..8,
            burst in 0u32..8,
            period_ms in 1u64..5_000,
            start in proptest::prop_oneof![0u64..10_000_000, proptest::strategy::Just(1_000_000_000u64)],
            steps in proptest::collection::vec((0u64..3_000_000, 0u32..4), 1..60),
        ) {
            use proptest::prelude::*;
            let q = Quota::per(Duration::from_millis(period_ms), count)
                .burst(burst)
                .with_algorithm(alg);
            let (mut packed, mut plain) = (KeyState::new(alg), Plain::new(alg));
            let mut now = start;
            for (dt, cost) in steps {
                now += dt;
                prop_assert_eq!(packed.is_idle(now, &q), plain.is_idle(now, &q));
                prop_assert_eq!(packed.decide(now, &q, cost), plain.decide(now, &q, cost));
            }
        }
    }

    #[test]
    fn packed_state_keeps_extreme_values() {
        for tat in [0, 1, u64::from(u32::MAX), 1 << 32, u64::MAX - 1, u64::MAX] {
            assert_eq!(Counters::from_tat(tat).tat(), tat);
        }
        let i = u64::MAX / 1000;
        let c = Counters::from_window(i, u64::from(u32::MAX), u64::from(u32::MAX));
        assert_eq!(
            c.sliding(),
            Some((i, u64::from(u32::MAX), u64::from(u32::MAX)))
        );
        assert_eq!(Counters::from_window(0, 0, 0).fixed(), Some((0, 0)));
        assert_eq!(Counters::FRESH.fixed(), None);
        // A huge quota, spent in one request, under each algorithm.
        for alg in [
            Algorithm::Gcra,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ] {
            let q = Quota::per(Duration::from_secs(u64::MAX / 4), u32::MAX).with_algorithm(alg);
            let (mut packed, mut plain) = (KeyState::new(alg), Plain::new(alg));
            for now in [1_000_000_000, 2_000_000_000, u64::MAX / 2] {
                assert_eq!(
                    packed.decide(now, &q, u32::MAX),
                    plain.decide(now, &q, u32::MAX)
                );
                assert_eq!(packed.is_idle(now, &q), plain.is_idle(now, &q));
            }
        }
    }
}

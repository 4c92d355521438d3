//! What every clone of the rate-limit layer and its services shares: the settings, the
//! failure modes they choose, and the runtime state (the offender cache, the degraded flag).

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Instant,
};

use crate::{
    HeaderMode, MemoryBackend, Plan, Policy,
    backend::memory::{MAX_KEY_BYTES, long_key_digest},
};

/// What to do when the backend (Redis) cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Let the request through (the default): an outage of Redis is not an outage of the
    /// service. Counted in `turret_ratelimit_backend_errors_total`.
    #[default]
    Open,
    /// Answer `503 Service Unavailable`.
    Closed,
}

/// What to do when a request has no key (no peer address, no API-key header, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingKeyAction {
    /// Answer `500` and log what is missing (the default): a misconfiguration is loud.
    #[default]
    Reject,
    /// Count every such request against one shared key.
    SharedKey,
}

/// Local memory of clients refused until a known time, so that a flood from one client is
/// refused without asking Redis (bounded; never refuses past the time Redis gave). Keys the
/// client may choose the length of (an API key header) are kept as the memory backend keeps
/// them: as they are up to 128 bytes, as a 33-byte digest beyond, so the cache's memory is
/// bounded by its entry count whatever clients send.
#[derive(Debug, Default)]
pub(crate) struct Offenders {
    map: Mutex<HashMap<(Arc<str>, String), Blocked>>,
}

/// A client refused until `until` under `plan`, by its limit `binding`.
#[derive(Debug)]
struct Blocked {
    until: Instant,
    plan: Plan,
    binding: usize,
}

const MAX_OFFENDERS: usize = 100_000;

impl Offenders {
    /// When the key is refused until under `plan` (a plan changed since then, or another
    /// plan the key has now, is asked again), and by which limit.
    pub(crate) fn blocked_until(
        &self,
        policy: &Arc<str>,
        key: &str,
        plan: &Plan,
    ) -> Option<(Instant, usize)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let blocked = map.get(&(policy.clone(), bounded(key).into_owned()))?;
        (blocked.until > Instant::now() && blocked.plan == *plan)
            .then_some((blocked.until, blocked.binding))
    }

    pub(crate) fn block(
        &self,
        policy: &Arc<str>,
        key: &str,
        plan: &Plan,
        binding: usize,
        until: Instant,
    ) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_OFFENDERS {
            let now = Instant::now();
            map.retain(|_, b| b.until > now);
            if map.len() >= MAX_OFFENDERS {
                return;
            }
        }
        let blocked = Blocked {
            until,
            plan: plan.clone(),
            binding,
        };
        map.insert((policy.clone(), bounded(key).into_owned()), blocked);
    }
}

/// How many requests of each key wait for their turn (delay mode), bounded per key by the
/// policy and in keys by [`MAX_WAITING_KEYS`].
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    map: Mutex<HashMap<(usize, String), u32>>,
}

/// Keys with requests waiting at once, at most: beyond, requests are decided without delay.
const MAX_WAITING_KEYS: usize = 100_000;

impl Waiting {
    /// A place for one more waiter of `key` under policy `idx`, unless `max` already wait.
    pub(crate) fn enter(self: &Arc<Self>, idx: usize, key: &str, max: u32) -> Option<Waiter> {
        let key = bounded(key).into_owned();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_WAITING_KEYS && !map.contains_key(&(idx, key.clone())) {
            return None;
        }
        let n = map.entry((idx, key.clone())).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Waiter {
            waiting: self.clone(),
            idx,
            key,
        })
    }

    /// How many wait for `key` under policy `idx`.
    #[cfg(test)]
    pub(crate) fn count(&self, idx: usize, key: &str) -> u32 {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(idx, bounded(key).into_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// One waiter's place; dropped, it leaves.
#[derive(Debug)]
pub(crate) struct Waiter {
    waiting: Arc<Waiting>,
    idx: usize,
    key: String,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiting.map.lock().unwrap_or_else(|e| e.into_inner());
        let k = (self.idx, std::mem::take(&mut self.key));
        if let Some(n) = map.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&k);
            }
        }
    }
}

/// The key as the offender cache keeps it: the memory backend's bound and digest.
fn bounded(key: &str) -> Cow<'_, str> {
    if key.len() > MAX_KEY_BYTES {
        Cow::Owned(long_key_digest(key))
    } else {
        Cow::Borrowed(key)
    }
}

/// Settings shared by every clone of the layer and its services, and the runtime state
/// they share (behind `Arc`s, so that every service built by one layer shares it).
#[derive(Clone)]
pub(crate) struct Shared<K, Bk, L> {
    pub(crate) policies: Vec<Policy>,
    pub(crate) exempt: Vec<String>,
    pub(crate) allow: Vec<String>,
    pub(crate) key: K,
    pub(crate) backend: Bk,
    pub(crate) on_limited: L,
    pub(crate) header_mode: HeaderMode,
    pub(crate) failure: FailureMode,
    pub(crate) fallback: Option<MemoryBackend>,
    pub(crate) missing: MissingKeyAction,
    /// Clients Redis refused until a known time.
    pub(crate) offenders: Arc<Offenders>,
    /// Requests waiting for their turn (delay mode).
    pub(crate) waiting: Arc<Waiting>,
    /// Whether the backend failed on its last decision (one log line per change).
    pub(crate) degraded: Arc<AtomicBool>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn offenders_keep_long_client_keys_as_digests_and_tell_them_apart() {
        let offenders = Offenders::default();
        let policy: Arc<str> = Arc::from("default");
        let plan = Plan::new("default", crate::Quota::per_second(1));
        let until = Instant::now() + Duration::from_secs(60);
        let long_a = "a".repeat(64 * 1024);
        let long_b = format!("{}b", "a".repeat(64 * 1024 - 1));
        let at_bound = "k".repeat(MAX_KEY_BYTES);
        offenders.block(&policy, &long_a, &plan, 0, until);
        offenders.block(&policy, &at_bound, &plan, 0, until);
        assert_eq!(
            offenders.blocked_until(&policy, &long_a, &plan),
            Some((until, 0))
        );
        assert_eq!(
            offenders.blocked_until(&policy, &at_bound, &plan),
            Some((until, 0))
        );
        // Another long key, the same but for its last byte, is not blocked by the first.
        assert_eq!(offenders.blocked_until(&policy, &long_b, &plan), None);
        // Under another plan (changed at run time), the key is asked again.
        let other = Plan::new("default", crate::Quota::per_second(2));
        assert_eq!(offenders.blocked_until(&policy, &long_a, &other), None);
        let map = offenders.map.lock().unwrap();
        let mut lengths: Vec<usize> = map.keys().map(|(_, k)| k.len()).collect();
        lengths.sort_unstable();
        // 33 bytes for the 64 KiB key; the key at the bound as it is.
        assert_eq!(lengths, [33, MAX_KEY_BYTES]);
    }

    #[test]
    fn waiters_are_bounded_per_key_and_leave_when_dropped() {
        let waiting = Arc::new(Waiting::default());
        let a = waiting.enter(0, "k", 2).expect("first");
        let b = waiting.enter(0, "k", 2).expect("second");
        assert!(
            waiting.enter(0, "k", 2).is_none(),
            "a third waiter of the key"
        );
        // Other keys and other policies have their own count.
        let other = waiting.enter(0, "j", 2).expect("another key");
        let _policy = waiting.enter(1, "k", 2).expect("another policy");
        assert_eq!(waiting.count(0, "k"), 2);
        drop(a);
        assert_eq!(waiting.count(0, "k"), 1);
        let c = waiting.enter(0, "k", 2).expect("a place again");
        drop((b, c, other));
        assert_eq!(waiting.count(0, "k"), 0);
        assert_eq!(
            waiting.map.lock().unwrap().len(),
            1,
            "only policy 1's waiter is left"
        );
    }
}

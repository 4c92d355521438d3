//! What every clone of the rate-limit layer and its services shares: the settings, the
//! failure modes they choose, and the runtime state (the offender cache, the degraded flag).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Instant,
};

use crate::{HeaderMode, MemoryBackend, Policy};

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
/// refused without asking Redis (bounded; never refuses past the time Redis gave).
#[derive(Debug, Default)]
pub(crate) struct Offenders {
    map: Mutex<HashMap<(Arc<str>, String), Instant>>,
}

const MAX_OFFENDERS: usize = 100_000;

impl Offenders {
    pub(crate) fn blocked_until(&self, policy: &Arc<str>, key: &str) -> Option<Instant> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let until = *map.get(&(policy.clone(), key.to_owned()))?;
        (until > Instant::now()).then_some(until)
    }

    pub(crate) fn block(&self, policy: &Arc<str>, key: &str, until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_OFFENDERS {
            let now = Instant::now();
            map.retain(|_, t| *t > now);
            if map.len() >= MAX_OFFENDERS {
                return;
            }
        }
        map.insert((policy.clone(), key.to_owned()), until);
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
    /// Whether the backend failed on its last decision (one log line per change).
    pub(crate) degraded: Arc<AtomicBool>,
}

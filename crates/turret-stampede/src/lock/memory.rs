//! The lease lock for the instances of one process.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use super::{Attempt, Lease, LockBackend, LockError, ReleaseSignal, ReleaseWaiters};

struct Held {
    token: u128,
    expires: Instant,
}

struct State {
    held: HashMap<String, Held>,
    sweep_at: usize,
}

/// A lease lock in this process's memory (Tokio's clock, so paused-time tests apply).
///
/// Fencing tokens come from one counter started at the wall clock in microseconds, so they
/// grow across restarts as long as the clock does. Expired leases are swept when the table
/// has doubled since the last sweep, so the table is bounded by the leases actually held.
pub struct MemoryLock {
    state: Mutex<State>,
    fence: AtomicU64,
    waiters: ReleaseWaiters,
}

impl fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLock")
            .field("held", &self.lock().held.len())
            .finish()
    }
}

impl Default for MemoryLock {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLock {
    /// An empty lock table.
    pub fn new() -> Self {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Self {
            state: Mutex::new(State {
                held: HashMap::new(),
                sweep_at: 64,
            }),
            fence: AtomicU64::new(start),
            waiters: ReleaseWaiters::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acquire_now(&self, key: &str, ttl: Duration) -> Attempt {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(held) = state.held.get(key)
            && held.expires > now
        {
            return Attempt::Held {
                expires_in: Some(held.expires - now),
            };
        }
        if state.held.len() >= state.sweep_at {
            state.held.retain(|_, h| h.expires > now);
            state.sweep_at = (state.held.len() * 2).max(64);
        }
        let token = Lease::random_token();
        let fence = self.fence.fetch_add(1, Ordering::Relaxed) + 1;
        state.held.insert(
            key.to_owned(),
            Held {
                token,
                expires: now + ttl,
            },
        );
        Attempt::Acquired(Lease::new(key, token, fence, ttl))
    }
}

impl LockBackend for MemoryLock {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Attempt, LockError> {
        Ok(self.acquire_now(key, ttl))
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let now = Instant::now();
        let mut state = self.lock();
        match state.held.get_mut(lease.key()) {
            Some(held) if held.token == lease.token() && held.expires > now => {
                held.expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let released = {
            let mut state = self.lock();
            match state.held.get(lease.key()) {
                Some(held) if held.token == lease.token() => {
                    state.held.remove(lease.key());
                    true
                }
                _ => false,
            }
        };
        if released {
            self.waiters.notify(lease.key().as_bytes());
        }
        Ok(released)
    }

    fn release_signal(&self, key: &str) -> ReleaseSignal {
        self.waiters.signal(key)
    }

    async fn next_fence(&self, _key: &str) -> Result<u64, LockError> {
        // The leases' own counter: every lease granted before gets a smaller token.
        Ok(self.fence.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

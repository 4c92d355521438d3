//! A lease lock with fencing tokens: in memory for one instance, on Redis for a fleet.
//!
//! A [`LockBackend`] knows the lock's own atomic operations (try to acquire, extend,
//! release, and a signal that fires when a lease may have been released). [`LeaseLock`]
//! adds what every backend shares: the [`LeaseGuard`] with its watchdog, and waiting for a
//! release woken by the backend's signal, with jittered polling only as a fallback.

mod any;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rand::Rng as _;
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until},
};

pub use any::AnyLock;
pub use memory::MemoryLock;
#[cfg(feature = "redis")]
pub use redis::RedisLock;

/// Default lease time-to-live: 10 s (extended by the watchdog while the guard lives).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default cap of the fallback polling interval while waiting for a release: 1 s.
pub const DEFAULT_MAX_POLL: Duration = Duration::from_secs(1);

/// One held lease: the key, the holder's random token and the fencing token.
#[derive(Clone, PartialEq, Eq)]
pub struct Lease {
    key: String,
    token: u128,
    fence: u64,
    ttl: Duration,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a capability (it releases the lease): keep it out of logs.
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("fence", &self.fence)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A lease as a backend grants it: `token` must be random (128 bits from a CSPRNG, see
    /// [`Lease::random_token`]), `fence` must be larger than every fence granted before on
    /// `key`.
    pub fn new(key: impl Into<String>, token: u128, fence: u64, ttl: Duration) -> Self {
        Self {
            key: key.into(),
            token,
            fence,
            ttl,
        }
    }

    /// A fresh 128-bit random token.
    pub fn random_token() -> u128 {
        rand::random()
    }

    /// The locked key (as the caller named it, before any backend prefix).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The holder's token: only a release or extension carrying it has any effect.
    pub fn token(&self) -> u128 {
        self.token
    }

    /// The fencing token: strictly larger than the fence of every earlier lease on the key,
    /// so that a resource can refuse a write from a holder whose lease has since passed to
    /// someone else.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// The time-to-live the lease was granted with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// The outcome of one attempt to acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The lease is ours.
    Acquired(Lease),
    /// Someone else holds it, for at most this long unless extended (`None`: unknown).
    Held {
        /// How long the current lease has left, if the backend knows.
        expires_in: Option<Duration>,
    },
}

/// The lock backend could not answer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LockError {
    /// The backend is unreachable (Redis down, timing out, or its circuit breaker open).
    /// Callers degrade to in-process coalescing.
    Unavailable(String),
    /// The backend answered with an error (a script error, a wrong-type key).
    Backend(String),
}

impl LockError {
    /// Whether the backend was unreachable (as opposed to answering with an error).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LockError::Unavailable(_))
    }
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Unavailable(e) => write!(f, "lock backend unavailable: {e}"),
            LockError::Backend(e) => write!(f, "lock backend error: {e}"),
        }
    }
}

impl std::error::Error for LockError {}

/// Why [`LeaseLock::acquire`] returned without a lease.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AcquireError {
    /// Someone else held the lease for the whole wait.
    Timeout(Duration),
    /// The backend failed.
    Lock(LockError),
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Timeout(d) => write!(f, "lease still held by another after {d:?}"),
            AcquireError::Lock(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AcquireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcquireError::Lock(e) => Some(e),
            AcquireError::Timeout(_) => None,
        }
    }
}

impl From<LockError> for AcquireError {
    fn from(e: LockError) -> Self {
        AcquireError::Lock(e)
    }
}

/// The atomic operations of a lease lock.
///
/// Implementations: [`MemoryLock`] (one process) and `RedisLock` (a fleet; feature `redis`).
pub trait LockBackend: Send + Sync + 'static {
    /// Tries once to take the lease on `key` for `ttl`.
    fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Attempt, LockError>> + Send;

    /// Extends a lease we hold to `ttl` from now; `false` if it is no longer ours.
    fn extend(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, LockError>> + Send;

    /// Releases a lease we hold and wakes the waiters; `false` (and no effect) if it is no
    /// longer ours.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<bool, LockError>> + Send;

    /// A signal that fires (maybe spuriously) when the lease on `key` may have been
    /// released. Must be called inside a Tokio runtime.
    fn release_signal(&self, key: &str) -> ReleaseSignal;

    /// A fencing token for `key` larger than that of every lease on `key` granted before
    /// this call (and smaller than every one granted after), without taking a lease: what a
    /// write-through ([`crate::StampedeCache::set`]) stores under, so that a computation
    /// that began before it can never overwrite it. The default refuses: a backend that
    /// cannot order writes against its leases must not pretend to.
    fn next_fence(&self, key: &str) -> impl Future<Output = Result<u64, LockError>> + Send {
        let _ = key;
        std::future::ready(Err(LockError::Backend(
            "this lock backend cannot fence writes (no next_fence)".to_owned(),
        )))
    }
}

/// Per-key release signals of one backend, for its local waiters.
///
/// A backend notifies a key when it releases a lease on it (or learns that another
/// instance did), or notifies every key when it may have missed such news.
#[derive(Clone, Default)]
pub struct ReleaseWaiters {
    keys: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl fmt::Debug for ReleaseWaiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseWaiters")
            .field("keys", &self.lock().len())
            .finish()
    }
}

impl ReleaseWaiters {
    /// No waiters.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A signal for `key`; the entry lives as long as some signal for it does.
    pub fn signal(&self, key: &str) -> ReleaseSignal {
        let mut keys = self.lock();
        let rx = match keys.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                keys.insert(key.to_owned(), tx);
                rx
            }
        };
        ReleaseSignal {
            rx: Some(rx),
            key: key.to_owned(),
            waiters: self.clone(),
        }
    }

    /// Wakes the waiters of `key`.
    pub fn notify(&self, key: &[u8]) {
        let keys = self.lock();
        if let Some(tx) = std::str::from_utf8(key).ok().and_then(|k| keys.get(k)) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every waiter (news may have been lost).
    pub fn notify_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Keys with at least one waiter.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fires when a lease on one key may have been released (see [`ReleaseWaiters`]).
pub struct ReleaseSignal {
    rx: Option<watch::Receiver<u64>>,
    key: String,
    waiters: ReleaseWaiters,
}

impl fmt::Debug for ReleaseSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseSignal")
            .field("key", &self.key)
            .finish()
    }
}

impl ReleaseSignal {
    /// Forgets earlier notifications: [`ReleaseSignal::notified`] then waits for a newer one.
    pub fn mark_seen(&mut self) {
        if let Some(rx) = &mut self.rx {
            rx.borrow_and_update();
        }
    }

    /// Waits for a notification newer than the last [`ReleaseSignal::mark_seen`].
    pub async fn notified(&mut self) {
        match &mut self.rx {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for ReleaseSignal {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut keys = self.waiters.lock();
        if keys
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            keys.remove(&self.key);
        }
    }
}

/// A lease lock over a [`LockBackend`]: guards with a watchdog, and waiting for a release.
///
/// ```
/// use std::time::Duration;
/// use turret_stampede::LeaseLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lock = LeaseLock::memory().ttl(Duration::from_secs(5));
/// let first = lock.try_acquire("report").await.unwrap().expect("free");
/// assert!(lock.try_acquire("report").await.unwrap().is_none(), "held");
/// let fence = first.fence();
/// first.release().await.unwrap();
///
/// let second = lock.acquire("report", Duration::from_secs(1)).await.unwrap();
/// assert!(second.fence() > fence, "fencing tokens only grow");
/// # }
/// ```
pub struct LeaseLock<L = MemoryLock> {
    backend: Arc<L>,
    ttl: Duration,
    watchdog: bool,
    max_poll: Duration,
}

impl<L> Clone for LeaseLock<L> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            ttl: self.ttl,
            watchdog: self.watchdog,
            max_poll: self.max_poll,
        }
    }
}

impl<L: fmt::Debug> fmt::Debug for LeaseLock<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseLock")
            .field("backend", &self.backend)
            .field("ttl", &self.ttl)
            .field("watchdog", &self.watchdog)
            .field("max_poll", &self.max_poll)
            .finish()
    }
}

impl LeaseLock<MemoryLock> {
    /// A lock for the instances of one process.
    pub fn memory() -> Self {
        Self::new(MemoryLock::new())
    }
}

#[cfg(feature = "redis")]
impl LeaseLock<RedisLock> {
    /// A lock shared by every instance that uses this Redis (see [`RedisLock`]).
    pub fn redis(redis: turret_redis::Redis) -> Self {
        Self::new(RedisLock::new(redis))
    }
}

impl<L: LockBackend> LeaseLock<L> {
    /// A lock over `backend`, with a 10 s lease kept alive by a watchdog.
    pub fn new(backend: L) -> Self {
        Self {
            backend: Arc::new(backend),
            ttl: DEFAULT_LEASE_TTL,
            watchdog: true,
            max_poll: DEFAULT_MAX_POLL,
        }
    }

    /// The lease time-to-live (default 10 s, at least 3 ms, at most a day). With the watchdog on, it is
    /// how long a crashed holder keeps others out.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(Duration::from_millis(3), Duration::from_secs(24 * 3600));
        self
    }

    /// Whether a guard extends its lease every ttl/3 while it lives (default on). Without
    /// it the lease simply expires after the ttl.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// The cap of the fallback polling interval while waiting (default 1 s). Waiters are
    /// woken by the backend's release signal; polling only covers lost signals and holders
    /// that crashed without releasing.
    pub fn max_poll(mut self, max_poll: Duration) -> Self {
        self.max_poll = max_poll.max(Duration::from_millis(1));
        self
    }

    /// The backend.
    pub fn backend(&self) -> &L {
        &self.backend
    }

    /// A fencing token newer than every lease on `key` granted so far (see
    /// [`LockBackend::next_fence`]).
    pub async fn next_fence(&self, key: &str) -> Result<u64, LockError> {
        self.backend.next_fence(key).await
    }

    /// Tries once; `None` if someone else holds the lease.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<LeaseGuard<L>>, LockError> {
        match self.backend.try_acquire(key, self.ttl).await? {
            Attempt::Acquired(lease) => Ok(Some(self.guard(lease))),
            Attempt::Held { .. } => Ok(None),
        }
    }

    /// Acquires, waiting at most `max_wait` for the holder to release or its lease to
    /// expire.
    pub async fn acquire(
        &self,
        key: &str,
        max_wait: Duration,
    ) -> Result<LeaseGuard<L>, AcquireError> {
        let deadline = deadline_after(max_wait);
        let mut waiter = self.waiter(key);
        loop {
            if let Some(guard) = waiter.try_acquire().await? {
                return Ok(guard);
            }
            if !waiter.wait(deadline).await {
                return Err(AcquireError::Timeout(max_wait));
            }
        }
    }

    /// A waiter for `key`, for callers that do something between attempts (a cache
    /// re-reads the value the holder may have just stored).
    pub fn waiter(&self, key: &str) -> Waiter<'_, L> {
        Waiter {
            lock: self,
            key: key.to_owned(),
            signal: self.backend.release_signal(key),
            expires_in: None,
            backoff: Duration::from_millis(25),
        }
    }

    fn guard(&self, lease: Lease) -> LeaseGuard<L> {
        let lost = Arc::new(AtomicBool::new(false));
        let acquired_at = Instant::now();
        let watchdog = self.watchdog.then(|| {
            tokio::spawn(watchdog(
                self.backend.clone(),
                lease.clone(),
                self.ttl,
                lost.clone(),
            ))
        });
        LeaseGuard {
            backend: self.backend.clone(),
            lease: Some(lease),
            lost,
            watchdog,
            expires_at: acquired_at + self.ttl,
        }
    }
}

/// Waits for the lease on one key, woken by the backend's release signal.
pub struct Waiter<'a, L> {
    lock: &'a LeaseLock<L>,
    key: String,
    signal: ReleaseSignal,
    expires_in: Option<Duration>,
    backoff: Duration,
}

impl<L> fmt::Debug for Waiter<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter").field("key", &self.key).finish()
    }
}

impl<L: LockBackend> Waiter<'_, L> {
    /// Tries once; `None` if someone else holds the lease. A release after this call
    /// (even before [`Waiter::wait`]) wakes the next wait.
    pub async fn try_acquire(&mut self) -> Result<Option<LeaseGuard<L>>, LockError> {
        self.signal.mark_seen();
        match self
            .lock
            .backend
            .try_acquire(&self.key, self.lock.ttl)
            .await?
        {
            Attempt::Acquired(lease) => Ok(Some(self.lock.guard(lease))),
            Attempt::Held { expires_in } => {
                self.expires_in = expires_in;
                Ok(None)
            }
        }
    }

    /// Waits until a release is signalled, the fallback poll interval (jittered,
    /// exponential up to the lock's `max_poll`, and never past the holder's expiry) passes,
    /// or `deadline`. Returns `false` at the deadline.
    pub async fn wait(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let mut poll = self.backoff.min(self.lock.max_poll);
        if let Some(expires_in) = self.expires_in {
            poll = poll.min(expires_in + Duration::from_millis(1));
        }
        let jitter = rand::rng().random_range(0.5..1.0);
        let poll = poll.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(self.lock.max_poll);
        tokio::select! {
            () = self.signal.notified() => {
                metrics::counter!("turret_stampede_lock_wakeups_total", "by" => "signal").increment(1);
                true
            }
            () = sleep(poll) => {
                metrics::counter!("turret_stampede_lock_wakeups_total", "by" => "poll").increment(1);
                true
            }
            () = sleep_until(deadline) => false,
        }
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

async fn watchdog<L: LockBackend>(
    backend: Arc<L>,
    lease: Lease,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let period = ttl / 3;
    let mut valid_until = Instant::now() + ttl;
    loop {
        sleep(period).await;
        let asked = Instant::now();
        match backend.extend(&lease, ttl).await {
            Ok(true) => valid_until = asked + ttl,
            Ok(false) => {
                tracing::warn!(key = lease.key(), "lease lost: another holder took over");
                metrics::counter!("turret_stampede_lease_lost_total").increment(1);
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::debug!(key = lease.key(), error = %e, "lease extension failed");
                if Instant::now() >= valid_until {
                    tracing::warn!(key = lease.key(), "lease lost: could not extend it in time");
                    metrics::counter!("turret_stampede_lease_lost_total").increment(1);
                    lost.store(true, Ordering::Release);
                    return;
                }
            }
        }
    }
}

/// A held lease. Dropping it releases the lease (in a spawned task); prefer
/// [`LeaseGuard::release`] to know the outcome.
pub struct LeaseGuard<L: LockBackend> {
    backend: Arc<L>,
    lease: Option<Lease>,
    lost: Arc<AtomicBool>,
    watchdog: Option<JoinHandle<()>>,
    expires_at: Instant,
}

impl<L: LockBackend> fmt::Debug for LeaseGuard<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease", &self.lease)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl<L: LockBackend> LeaseGuard<L> {
    /// The fencing token of this lease (see [`Lease::fence`]).
    pub fn fence(&self) -> u64 {
        self.lease.as_ref().map_or(0, Lease::fence)
    }

    /// The lease.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Whether the lease is known or presumed lost: the watchdog found another holder or
    /// could not extend it before it expired; without a watchdog, once its ttl has passed.
    /// Work done under a lost lease must not be published unfenced.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
            || (self.watchdog.is_none() && Instant::now() >= self.expires_at)
    }

    /// Releases the lease (only if still ours) and wakes the waiters.
    ///
    /// If the backend is unreachable (Redis down, its circuit breaker open), the release is
    /// retried in the background until it succeeds or the lease would have expired anyway,
    /// so that waiters on other instances are not kept out for a whole TTL after Redis
    /// returns; the error is still returned.
    pub async fn release(mut self) -> Result<bool, LockError> {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let Some(lease) = self.lease.take() else {
            return Ok(false);
        };
        let result = self.backend.release(&lease).await;
        if let Err(e) = &result
            && e.is_unavailable()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(release_until_expiry(self.backend.clone(), lease));
        }
        result
    }
}

/// Retries a release the backend could not take (with backoff, up to 500 ms apart) until it
/// succeeds, fails for another reason, or the lease has expired by itself (its ttl after the
/// last extension, at most `ttl` from now).
async fn release_until_expiry<L: LockBackend>(backend: Arc<L>, lease: Lease) {
    let expires = Instant::now() + lease.ttl();
    let mut backoff = Duration::from_millis(25);
    loop {
        match backend.release(&lease).await {
            Err(e) if e.is_unavailable() && Instant::now() + backoff < expires => {
                tracing::debug!(key = lease.key(), "lease release failed; retrying");
                sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(key = lease.key(), error = %e, "lease release given up; it expires by itself");
                return;
            }
        }
    }
}

impl<L: LockBackend> Drop for LeaseGuard<L> {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if let Some(lease) = self.lease.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(release_until_expiry(self.backend.clone(), lease));
        }
    }
}

#[cfg(test)]
mod tests;

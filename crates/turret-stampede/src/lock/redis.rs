//! The lease lock on Redis: one holder per key for a whole fleet.

use std::{
    fmt,
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::oneshot;
use turret_redis::{Event, Redis, Script};

use super::{Attempt, Lease, LockBackend, LockError, ReleaseSignal, ReleaseWaiters};

/// The pub/sub channel (in the handle's namespace) on which releases are announced; the
/// message is the released key.
pub(crate) const RELEASE_CHANNEL: &str = "stampede:released";

/// How long a fence counter outlives the last acquisition of its key.
const FENCE_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// `SET lock token NX PX ttl`, then `INCR` of the fence counter in the same slot. A missing
/// counter starts at the server's clock in microseconds, so that fences keep growing after
/// the counter expired or Redis lost it.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stampede_acquire",
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])))
  end
  local fence = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {1, fence}
end
return {0, redis.call('PTTL', KEYS[1])}
",
    )
});

/// `INCR` of the fence counter alone (a write-through's token), started like `ACQUIRE`'s.
static NEXT_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stampede_next_fence",
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], t[1] .. string.format('%06d', tonumber(t[2])))
end
local fence = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return fence
",
    )
});

/// Compare-and-delete, then announce the release.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stampede_release",
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
",
    )
});

/// Compare-and-`PEXPIRE`.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stampede_extend",
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// A lease lock on Redis, shared by every instance that uses the same Redis and prefix.
///
/// - Acquire: one script doing `SET {lock} token NX PX ttl` (a 128-bit random token) and
///   `INCR {fence}` — both keys share the hash tag of the locked key, so it runs on a
///   Redis Cluster — returning the fencing token.
/// - Release: compare-and-delete, then `PUBLISH` of the key on `stampede:released`; only
///   the holder's token releases. Extend: compare-and-`PEXPIRE`.
/// - Waiters are woken by one subscription per handle to that channel; a subscription gap
///   (a reconnect) wakes every waiter, which then re-checks.
/// - Redis unreachable: every operation fails fast with [`LockError::Unavailable`] (the
///   handle's circuit breaker), which callers such as [`crate::StampedeCache`] turn into
///   in-process coalescing. The change of state is logged once each way and counted in
///   `turret_stampede_lock_unavailable_total`.
pub struct RedisLock {
    redis: Redis,
    waiters: ReleaseWaiters,
    listener: OnceLock<oneshot::Sender<()>>,
    degraded: Arc<AtomicBool>,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("redis", &self.redis)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisLock {
    /// A lock on this Redis (no I/O until first use).
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            waiters: ReleaseWaiters::new(),
            listener: OnceLock::new(),
            degraded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Whether the last operation found Redis unreachable.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn lock_key(&self, key: &str) -> String {
        self.redis.key("lock").tag(key).build()
    }

    fn observe<T>(&self, result: Result<T, turret_redis::Error>) -> Result<T, LockError> {
        observe(&self.degraded, result)
    }

    /// Starts the listener that turns release messages into local wake-ups.
    fn listen(&self) {
        self.listener.get_or_init(|| {
            let (tx, rx) = oneshot::channel();
            tokio::spawn(listen(self.redis.clone(), self.waiters.clone(), rx));
            tx
        });
    }
}

pub(crate) fn observe<T>(
    degraded: &AtomicBool,
    result: Result<T, turret_redis::Error>,
) -> Result<T, LockError> {
    match result {
        Ok(v) => {
            if degraded.swap(false, Ordering::Relaxed) {
                tracing::info!("redis reachable again: stampede protection is fleet-wide");
            }
            Ok(v)
        }
        Err(e) if e.is_unavailable() => {
            metrics::counter!("turret_stampede_lock_unavailable_total").increment(1);
            if !degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "redis unreachable: stampede protection falls back to this process");
            }
            Err(LockError::Unavailable(e.to_string()))
        }
        Err(e) => {
            if degraded.swap(false, Ordering::Relaxed) {
                tracing::info!("redis reachable again: stampede protection is fleet-wide");
            }
            Err(LockError::Backend(e.to_string()))
        }
    }
}

async fn listen(redis: Redis, waiters: ReleaseWaiters, mut stop: oneshot::Receiver<()>) {
    let Ok(mut subscription) = redis.subscribe(RELEASE_CHANNEL).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            event = subscription.recv() => match event {
                Some(Event::Message(key)) => waiters.notify(&key),
                Some(Event::Gap) => waiters.notify_all(),
                None => return,
            },
        }
    }
}

fn token_arg(token: u128) -> String {
    format!("{token:032x}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl LockBackend for RedisLock {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Attempt, LockError> {
        let token = Lease::random_token();
        let lock_key = self.lock_key(key);
        let fence_key = self.redis.key("fence").tag(key).build();
        let reply: Result<Vec<i64>, _> = ACQUIRE
            .key(&lock_key)
            .key(&fence_key)
            .arg(token_arg(token))
            .arg(millis(ttl))
            .arg(FENCE_TTL_MS)
            .invoke(&self.redis)
            .await;
        match self.observe(reply)?.as_slice() {
            [1, fence] => Ok(Attempt::Acquired(Lease::new(
                key,
                token,
                u64::try_from(*fence).unwrap_or(0),
                ttl,
            ))),
            [0, pttl] => Ok(Attempt::Held {
                expires_in: u64::try_from(*pttl).ok().map(Duration::from_millis),
            }),
            other => Err(LockError::Backend(format!(
                "unexpected reply to acquire: {other:?}"
            ))),
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let reply: Result<i64, _> = EXTEND
            .key(self.lock_key(lease.key()))
            .arg(token_arg(lease.token()))
            .arg(millis(ttl))
            .invoke(&self.redis)
            .await;
        Ok(self.observe(reply)? == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let reply: Result<i64, _> = RELEASE
            .key(self.lock_key(lease.key()))
            .arg(token_arg(lease.token()))
            .arg(self.redis.channel(RELEASE_CHANNEL))
            .arg(lease.key())
            .invoke(&self.redis)
            .await;
        let released = self.observe(reply)? == 1;
        if released {
            // Local waiters need not wait for the round trip through pub/sub.
            self.waiters.notify(lease.key().as_bytes());
        }
        Ok(released)
    }

    async fn next_fence(&self, key: &str) -> Result<u64, LockError> {
        let reply: Result<i64, _> = NEXT_FENCE
            .key(self.redis.key("fence").tag(key).build())
            .arg(FENCE_TTL_MS)
            .invoke(&self.redis)
            .await;
        let fence = self.observe(reply)?;
        u64::try_from(fence)
            .map_err(|_| LockError::Backend(format!("negative fence from Redis: {fence}")))
    }

    fn release_signal(&self, key: &str) -> ReleaseSignal {
        self.listen();
        self.waiters.signal(key)
    }
}

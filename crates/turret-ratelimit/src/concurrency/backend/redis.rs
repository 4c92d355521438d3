//! In-flight counts on Redis: a sorted set of leases per key.

use std::{sync::LazyLock, time::Duration};

use turret_redis::{Redis, Script, redis};

use super::{Acquire, ConcurrencyBackend, Permit};
use crate::BackendError;

/// KEYS[1] = sorted set of leases scored by expiry (µs, Redis time).
/// ARGV = max, lease id, lease ttl µs. Returns {granted, in flight}.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_concurrency_acquire",
        "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
return {1, n + 1}",
    )
});

/// In-flight counts on Redis, shared by the fleet. Each permit is a lease in a sorted
/// set that expires after the lease time if its instance dies without releasing it; a
/// request running longer than the lease time stops counting against its key.
#[derive(Debug, Clone)]
pub struct RedisConcurrency {
    redis: Redis,
    lease: Duration,
}

impl RedisConcurrency {
    /// Leases of 60 s.
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            lease: Duration::from_secs(60),
        }
    }

    /// How long a lease outlives an instance that died holding it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// The Redis key of `key` under `policy`.
    pub fn redis_key(&self, policy: &str, key: &str) -> String {
        let mut tag = Vec::with_capacity(policy.len() + key.len() + 1);
        tag.extend_from_slice(policy.as_bytes());
        tag.push(b'/');
        tag.extend_from_slice(key.as_bytes());
        self.redis.key("cc").tag(tag).build()
    }
}

impl ConcurrencyBackend for RedisConcurrency {
    fn acquire(&self, policy: &str, key: &str, max: u32) -> Acquire {
        let redis = self.redis.clone();
        let rkey = self.redis_key(policy, key);
        let lease = self.lease.as_micros() as u64;
        Acquire::Pending(Box::pin(async move {
            let id = format!("{:032x}", rand::random::<u128>());
            let reply: Vec<i64> = ACQUIRE
                .key(&rkey)
                .arg(max)
                .arg(&id)
                .arg(lease)
                .invoke(&redis)
                .await
                .map_err(|e| BackendError::new(e.to_string(), e.is_unavailable()))?;
            let [granted, in_flight] = reply[..] else {
                return Err(BackendError::new(
                    format!("unexpected reply {reply:?}"),
                    false,
                ));
            };
            if granted != 1 {
                return Ok(None);
            }
            Ok(Some(Permit::new(in_flight.max(0) as u32, move || {
                // Give the slot back without making anyone wait; if this fails, the lease
                // expires by itself.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = redis
                            .query::<i64>(redis::cmd("ZREM").arg(&rkey).arg(&id))
                            .await;
                    });
                }
            })))
        }))
    }
}

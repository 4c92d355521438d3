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

/// KEYS[1] = the sorted set; ARGV = max, lease id, lease ttl µs. Extends a live lease; one
/// that is gone (Redis restarted empty, or the lease ran out while Redis was unreachable) is
/// taken again if a slot is free. Returns 1 when the lease is held, 0 when it is lost.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_concurrency_renew",
        "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local ttl = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
return 1",
    )
});

/// In-flight counts on Redis, shared by the fleet. Each permit is a lease in a sorted
/// set. While its request runs, the instance extends the lease every third of the lease
/// time, so a request running longer than the lease keeps its slot; if the instance dies,
/// its leases expire after the lease time. A lease lost in an empty restart of Redis is
/// taken again at the next extension if a slot is free.
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

    /// How long a lease outlives an instance that died holding it (extended every third of
    /// it while the request runs).
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
            let renewing = tokio::spawn(renew(redis.clone(), rkey.clone(), id.clone(), max, lease))
                .abort_handle();
            Ok(Some(Permit::new(in_flight.max(0) as u32, move || {
                renewing.abort();
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

/// Extends lease `id` every third of the lease time until aborted (the permit's drop). A
/// failed call is retried at the next tick. A lease lost while its key is full (others took
/// the slots after an empty restart) is not counted until a slot frees, then taken again.
async fn renew(redis: Redis, rkey: String, id: String, max: u32, lease_micros: u64) {
    let every = Duration::from_micros((lease_micros / 3).max(1_000));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_logged = false;
    loop {
        tick.tick().await;
        match RENEW
            .key(&rkey)
            .arg(max)
            .arg(&id)
            .arg(lease_micros)
            .invoke::<i64>(&redis)
            .await
        {
            Ok(1) => lost_logged = false,
            Ok(_) => {
                if !lost_logged {
                    tracing::warn!(key = %rkey, "concurrency lease lost and its key is full; the running request is no longer counted");
                    lost_logged = true;
                }
            }
            Err(e) => {
                tracing::debug!(key = %rkey, error = %e, "concurrency lease extension failed; retrying")
            }
        }
    }
}

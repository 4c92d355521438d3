//! The Redis backend: one Lua script per decision, Redis server time, hash-tagged keys.

use std::sync::LazyLock;

use turret_redis::{Redis, Script};

use super::{Backend, BackendError, Decide};
use crate::{Algorithm, Decision, Quota};

/// Reads `TIME` as microseconds. Scripts replicate their effects (Redis ≥ 5 default), so a
/// script may read the clock before writing.
const NOW: &str =
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) ";

/// GCRA. KEYS[1] = tat. ARGV = emission interval, tolerance, cost, count (µs / units).
/// Returns {allowed, remaining, reset_us, retry_us (-1: never)}. No write on a refusal.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_gcra",
        format!(
            "{NOW}
local t_ = tonumber(ARGV[1]) local tau = tonumber(ARGV[2]) local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local new_tat = tat + t_ * cost
local diff = new_tat - now
if diff > tau or tonumber(ARGV[4]) == 0 then
  local avail = math.floor(math.max(tau - (tat - now), 0) / t_)
  local retry = -1
  if t_ * cost <= tau and tonumber(ARGV[4]) > 0 then retry = diff - tau end
  return {{0, avail, tat - now, retry}}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(diff / 1000) + 1)
return {{1, math.floor((tau - diff) / t_), diff, -1}}"
        ),
    )
});

/// Fixed window aligned to the epoch. KEYS[1] = hash {w, c}. ARGV = window µs, limit, cost.
static FIXED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_fixed_window",
        format!(
            "{NOW}
local w = tonumber(ARGV[1]) local limit = tonumber(ARGV[2]) local cost = tonumber(ARGV[3])
local idx = math.floor(now / w)
local st = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if st[1] and tonumber(st[1]) == idx then count = tonumber(st[2]) end
local reset = (idx + 1) * w - now
if count + cost > limit then
  local retry = -1
  if cost <= limit then retry = reset end
  return {{0, math.max(limit - count, 0), reset, retry}}
end
count = count + cost
redis.call('HSET', KEYS[1], 'w', string.format('%.0f', idx), 'c', count)
redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1)
return {{1, limit - count, reset, -1}}"
        ),
    )
});

/// Sliding window counter. KEYS[1] = hash {w, p, c}. ARGV = window µs, limit, cost.
static SLIDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_sliding_window",
        format!(
            "{NOW}
local w = tonumber(ARGV[1]) local limit = tonumber(ARGV[2]) local cost = tonumber(ARGV[3])
local idx = math.floor(now / w)
local st = redis.call('HMGET', KEYS[1], 'w', 'p', 'c')
local prev, curr = 0, 0
if st[1] then
  local i = tonumber(st[1])
  if i == idx then prev = tonumber(st[2]) curr = tonumber(st[3])
  elseif i + 1 == idx then prev = tonumber(st[3]) end
end
local left = w - (now - idx * w)
local est_w = prev * left + curr * w
local admit_w = math.max(limit - cost, 0) * w
if cost > limit or est_w > admit_w then
  local remaining = math.floor(math.max(limit * w - est_w, 0) / w)
  local retry = -1
  if cost <= limit then
    local need_w = est_w - admit_w
    if prev > 0 and need_w <= prev * left then
      retry = math.ceil(need_w / prev)
    else
      local cap = limit - cost
      local into_next = 0
      if curr > cap then into_next = math.ceil((curr - cap) * w / curr) end
      retry = left + into_next
    end
  end
  local reset = left
  if curr > 0 then reset = left + w end
  return {{0, remaining, reset, retry}}
end
curr = curr + cost
est_w = est_w + cost * w
redis.call('HSET', KEYS[1], 'w', string.format('%.0f', idx), 'p', prev, 'c', curr)
redis.call('PEXPIRE', KEYS[1], math.ceil((left + w) / 1000) + 1)
return {{1, math.floor((limit * w - est_w) / w), left + w, -1}}"
        ),
    )
});

/// Sliding window log. KEYS[1] = sorted set of admission times. ARGV = window µs, limit, cost.
static LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_sliding_log",
        format!(
            "{NOW}
local w = tonumber(ARGV[1]) local limit = tonumber(ARGV[2]) local cost = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - w))
local count = redis.call('ZCARD', KEYS[1])
if count + cost > limit then
  local retry = -1
  if cost <= limit then
    local e = redis.call('ZRANGE', KEYS[1], count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
    retry = tonumber(e[2]) + w - now
  end
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local reset = 0
  if last[2] then reset = tonumber(last[2]) + w - now end
  return {{0, math.max(limit - count, 0), reset, retry}}
end
local stamp = string.format('%.0f', now)
for i = 1, cost do
  redis.call('ZADD', KEYS[1], stamp, stamp .. ':' .. (count + i))
end
redis.call('PEXPIRE', KEYS[1], math.ceil(w / 1000) + 1)
return {{1, limit - count - cost, w, -1}}"
        ),
    )
});

/// Rate-limit state in Redis: every instance pointed at the same Redis shares one quota.
///
/// Each decision is one `EVALSHA` of a Lua script doing the same maths as the memory backend
/// atomically, on Redis' own clock (`TIME`), so the fleet agrees on time. A refusal writes
/// nothing. Keys are `{prefix}rl:{{policy/key}}:{algorithm}` with the client key escaped
/// (see `turret_redis::KeyBuilder`), so each runs on Redis Cluster and a client cannot reach
/// another client's key. Keys expire when their quota is whole again.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    redis: Redis,
}

impl RedisBackend {
    /// A backend over a shared Redis handle.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Loads the scripts on every node ahead of the first decision (optional).
    pub async fn preload(&self) -> Result<(), BackendError> {
        self.redis
            .preload(&[&GCRA, &FIXED, &SLIDING, &LOG])
            .await
            .map_err(|e| BackendError::new(e.to_string(), e.is_unavailable()))
    }

    /// The Redis key of `key` under `policy` for `algorithm`.
    pub fn redis_key(&self, policy: &str, key: &str, algorithm: Algorithm) -> String {
        let mut tag = Vec::with_capacity(policy.len() + key.len() + 1);
        tag.extend_from_slice(policy.as_bytes());
        tag.push(b'/');
        tag.extend_from_slice(key.as_bytes());
        self.redis
            .key("rl")
            .tag(tag)
            .part(algorithm.as_str())
            .build()
    }
}

impl Backend for RedisBackend {
    fn decide(&self, policy: &str, key: &str, quota: &Quota, cost: u32) -> Decide {
        let redis_key = self.redis_key(policy, key, quota.get_algorithm());
        let redis = self.redis.clone();
        let quota = *quota;
        Decide::Pending(Box::pin(async move {
            let script = match quota.get_algorithm() {
                Algorithm::Gcra => &*GCRA,
                Algorithm::FixedWindow => &*FIXED,
                Algorithm::SlidingWindow => &*SLIDING,
                Algorithm::SlidingLog => &*LOG,
            };
            let mut call = script.key(redis_key);
            call = match quota.get_algorithm() {
                Algorithm::Gcra => call
                    .arg(quota.emission_interval_micros())
                    .arg(quota.tolerance_micros())
                    .arg(cost)
                    .arg(quota.count()),
                _ => call.arg(quota.period_micros()).arg(quota.count()).arg(cost),
            };
            let reply: Vec<i64> = call
                .invoke(&redis)
                .await
                .map_err(|e| BackendError::new(e.to_string(), e.is_unavailable()))?;
            let [allowed, remaining, reset, retry] = reply[..] else {
                return Err(BackendError::new(
                    format!("unexpected reply from {}: {reply:?}", script.name()),
                    false,
                ));
            };
            let non_neg = |v: i64| v.max(0) as u64;
            Ok(Decision::from_micros(
                allowed == 1,
                quota.count(),
                non_neg(remaining),
                non_neg(reset),
                (allowed != 1 && retry >= 0).then(|| non_neg(retry)),
            ))
        }))
    }
}

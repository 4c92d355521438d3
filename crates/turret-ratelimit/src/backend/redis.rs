//! The Redis backend: one Lua script per decision (or per batch of a hot key's decisions),
//! Redis server time, hash-tagged keys.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use smallvec::SmallVec;
use tokio::sync::oneshot;
use turret_redis::{Redis, Script, push_escaped, redis::Value};

use super::{Backend, BackendError, Decide};
use crate::{Algorithm, Decision, Limit, Outcome, Plan, Quota};

/// Reads `TIME` as microseconds. Scripts replicate their effects (Redis ≥ 5 default), so a
/// script may read the clock before writing.
const NOW: &str =
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) ";

/// Every script decides a batch: ARGV holds its parameters, then one cost per request, and
/// it returns four integers per request — {allowed, remaining, reset_us, retry_us (-1:
/// never)} — decided in order at one instant, as if the requests had come one by one.
/// `one(cost)` is the algorithm for one request; scripts that keep their state in Lua
/// variables read it once before the loop and write it once in `save`, after it.
fn batch(params: usize, save: &str) -> String {
    format!(
        "local out = {{}}
for j = {first}, #ARGV do
  local r = one(tonumber(ARGV[j]))
  out[#out + 1] = r[1] out[#out + 1] = r[2] out[#out + 1] = r[3] out[#out + 1] = r[4]
end
{save}
return out",
        first = params + 1
    )
}

/// GCRA. KEYS[1] = tat. ARGV = emission interval, tolerance, count (µs / units), costs.
/// One read and, unless every request was refused, one write per batch. The key lives until
/// the quota is whole again but at least a second: a key whose quota is far from spent
/// would otherwise expire within milliseconds and be made again by its next request (a TAT
/// in the past decides as "now", so keeping it longer changes nothing).
///
/// Written for the cost of each call, as `batch` describes but without its per-request
/// closure and table: the loop fills one flat reply; numbers come from strings by Lua's
/// arithmetic coercion (the same conversion as `tonumber`); a reply number is truncated to an
/// integer by Redis, which is `math.floor` for these non-negative values; the expiry needs no
/// call below the one-second floor. The TAT is stored as the same decimal integer as ever: a
/// number argument is formatted by Redis (`%.17g`, or the shortest form on Redis ≥ 7.2,
/// which is written in exponent form for eight or more trailing zeros), so only a TAT that
/// either form would not write as its plain digits goes through `string.format`.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_gcra",
        "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2]
local t_, tau, count = ARGV[1] + 0, ARGV[2] + 0, ARGV[3] + 0
local stored = tonumber(redis.call('GET', KEYS[1]) or 0)
local changed = false
local out, n = {}, 0
for j = 4, #ARGV do
  local cost = ARGV[j] + 0
  local tat = stored
  if tat < now then tat = now end
  local new_tat = tat + t_ * cost
  local diff = new_tat - now
  if diff > tau or count == 0 then
    local avail = tau - (tat - now)
    if avail < 0 then avail = 0 end
    local retry = -1
    if t_ * cost <= tau and count > 0 then retry = diff - tau end
    out[n + 1] = 0 out[n + 2] = avail / t_ out[n + 3] = tat - now out[n + 4] = retry
  else
    stored = new_tat
    changed = true
    out[n + 1] = 1 out[n + 2] = (tau - diff) / t_ out[n + 3] = diff out[n + 4] = -1
  end
  n = n + 4
end
if changed then
  local px = 1000
  if stored - now > 999000 then
    px = math.ceil((stored - now) / 1000) + 1
    if px >= 9007199254740992 or px % 100000000 == 0 then px = string.format('%.0f', px) end
  end
  local v = stored
  if v >= 9007199254740992 or v % 100000000 == 0 then v = string.format('%.0f', v) end
  redis.call('SET', KEYS[1], v, 'PX', px)
end
return out",
    )
});

/// Fixed window aligned to the epoch. KEYS[1] = hash {w, c}. ARGV = window µs, limit, costs.
static FIXED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_fixed_window",
        format!(
            "{NOW}
local w = tonumber(ARGV[1]) local limit = tonumber(ARGV[2])
local idx = math.floor(now / w)
local st = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if st[1] and tonumber(st[1]) == idx then count = tonumber(st[2]) end
local reset = (idx + 1) * w - now
local changed = false
local function one(cost)
if count + cost > limit then
  local retry = -1
  if cost <= limit then retry = reset end
  return {{0, math.max(limit - count, 0), reset, retry}}
end
count = count + cost
changed = true
return {{1, limit - count, reset, -1}}
end
{}",
            batch(
                2,
                "if changed then
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', idx), 'c', count)
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1)
end"
            )
        ),
    )
});

/// Sliding window counter. KEYS[1] = hash {w, p, c}. ARGV = window µs, limit, costs.
static SLIDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_sliding_window",
        format!(
            "{NOW}
local w = tonumber(ARGV[1]) local limit = tonumber(ARGV[2])
local idx = math.floor(now / w)
local st = redis.call('HMGET', KEYS[1], 'w', 'p', 'c')
local prev, curr = 0, 0
if st[1] then
  local i = tonumber(st[1])
  if i == idx then prev = tonumber(st[2]) curr = tonumber(st[3])
  elseif i + 1 == idx then prev = tonumber(st[3]) end
end
local left = w - (now - idx * w)
local changed = false
local function one(cost)
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
changed = true
return {{1, math.floor((limit * w - est_w) / w), left + w, -1}}
end
{}",
            batch(
                2,
                "if changed then
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', idx), 'p', prev, 'c', curr)
  redis.call('PEXPIRE', KEYS[1], math.ceil((left + w) / 1000) + 1)
end"
            )
        ),
    )
});

/// Sliding window log. KEYS[1] = sorted set of admission times. ARGV = window µs, limit,
/// costs.
static LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_sliding_log",
        format!(
            "{NOW}
local w = tonumber(ARGV[1]) local limit = tonumber(ARGV[2])
local function one(cost)
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
return {{1, limit - count - cost, w, -1}}
end
{}",
            batch(2, "")
        ),
    )
});

/// Several limits at once, all-or-nothing, every limit GCRA (a plan's commonest shape), with
/// or without delay mode. KEYS = one per limit (one hash slot: the same tag). ARGV = maximum
/// delay µs (0: none), then per limit its emission interval, tolerance and count (µs /
/// units), then one cost per request. Returns per request either, admitted, its delay µs
/// (≥ 0) and per limit {remaining, reset_us}, or, refused, -1 and per limit {allowed,
/// remaining, reset_us, retry_us (-1: never)}, where a limit that would have admitted the
/// request reports what it has left without it (read by `multi_outcomes`). One read of
/// every TAT and, unless every request was refused, one write of each per batch; each key
/// lives as the single-quota GCRA key does.
///
/// In delay mode a request every limit would admit within the maximum delay waits for the
/// last of them: it is decided at `now + wait` and its reset counts from now.
///
/// The decisions, writes and stored bytes are those of the one multi-limit script before
/// #18, which the differential test in `script_tests` keeps as its reference; the script is
/// written for the cost of each call as [`GCRA`] is: the states and parameters are flat
/// arrays read once, the loop fills one flat reply with no table, closure or `math.*` call
/// per request or limit (reply numbers are truncated by Redis, which is `math.floor` for
/// these non-negative values), an admitted request's reply leaves out what it implies
/// (allowed, no retry: 5 numbers instead of 9 for two limits; the reply's conversion is
/// much of a batch's cost), and the writes format the TAT and expiry as the GCRA script does.
static MULTI_GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_multi_gcra",
        "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2]
local n, maxd = #KEYS, ARGV[1] + 0
local T, U, C, S = {}, {}, {}, {}
for i = 1, n do
  T[i] = ARGV[3 * i - 1] + 0 U[i] = ARGV[3 * i] + 0 C[i] = ARGV[3 * i + 1] + 0
  S[i] = tonumber(redis.call('GET', KEYS[i]) or 0)
end
local out, k, changed = {}, 0, false
for j = 3 * n + 2, #ARGV do
  local cost = ARGV[j] + 0
  local at, delay, all = now, 0, true
  if maxd > 0 then
    local wait = 0
    for i = 1, n do
      local tat = S[i]
      if tat < now then tat = now end
      local diff = tat + T[i] * cost - now
      if diff > U[i] or C[i] == 0 then
        if T[i] * cost > U[i] or C[i] == 0 then wait = -1 break end
        if diff - U[i] > wait then wait = diff - U[i] end
      end
    end
    if wait >= 0 and wait <= maxd then at = now + wait delay = wait end
  end
  for i = 1, n do
    local tat = S[i]
    if tat < at then tat = at end
    if tat + T[i] * cost - at > U[i] or C[i] == 0 then all = false break end
  end
  if all then
    out[k + 1] = delay
    for i = 1, n do
      local tat = S[i]
      if tat < at then tat = at end
      local new_tat = tat + T[i] * cost
      local diff = new_tat - at
      S[i] = new_tat
      out[k + 2 * i] = (U[i] - diff) / T[i] out[k + 2 * i + 1] = diff + delay
    end
    k = k + 1 + 2 * n
    changed = true
  else
    out[k + 1] = -1
    for i = 1, n do
      local tat = S[i]
      if tat < now then tat = now end
      local tau = U[i]
      local diff = tat + T[i] * cost - now
      local b = k + 4 * i - 2
      if diff > tau or C[i] == 0 then
        local avail = tau - (tat - now)
        if avail < 0 then avail = 0 end
        local retry = -1
        if T[i] * cost <= tau and C[i] > 0 then retry = diff - tau end
        out[b] = 0 out[b + 1] = avail / T[i] out[b + 2] = tat - now out[b + 3] = retry
      else
        out[b] = 1 out[b + 1] = (tau - (tat - now)) / T[i] out[b + 2] = tat - now out[b + 3] = -1
      end
    end
    k = k + 1 + 4 * n
  end
end
if changed then
  for i = 1, n do
    local v = S[i]
    local px = 1000
    if v - now > 999000 then
      px = math.ceil((v - now) / 1000) + 1
      if px >= 9007199254740992 or px % 100000000 == 0 then px = string.format('%.0f', px) end
    end
    if v >= 9007199254740992 or v % 100000000 == 0 then v = string.format('%.0f', v) end
    redis.call('SET', KEYS[i], v, 'PX', px)
  end
end
return out",
    )
});

/// Several limits at once, all-or-nothing, any algorithms (a plan with a window; every
/// limit GCRA goes to [`MULTI_GCRA`], and so does delay mode, which needs every limit GCRA).
/// KEYS = one per limit (one hash slot: the same tag). ARGV = four numbers per limit —
/// algorithm (1 GCRA, 2 fixed window, 3 sliding window, 4 sliding log) and its parameters —
/// then one cost per request. Replies as [`MULTI_GCRA`] does (the delay of an admitted
/// request is always 0 here). Each state is read once and written once per batch.
///
/// The decisions, writes and stored bytes are those of the script before #18 (see
/// [`MULTI_GCRA`]); `check` gives one limit's decision as four values kept in the limit's
/// table (no table per request or limit), numbers come from arguments by coercion and
/// non-negative reply numbers are truncated by Redis rather than by `math.floor`. A GCRA
/// state is written as [`GCRA`] writes it; the windows' writes are those of their own
/// scripts.
static MULTI: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_multi",
        "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2]
local n = #KEYS
local L = {}
for i = 1, n do
  local b = 4 * i - 3
  local l = {k = KEYS[i], alg = ARGV[b] + 0, a = ARGV[b + 1] + 0, b = ARGV[b + 2] + 0,
    c = ARGV[b + 3] + 0, changed = false}
  if l.alg == 1 then
    l.tat = tonumber(redis.call('GET', l.k) or 0)
  elseif l.alg == 2 then
    l.idx = math.floor(now / l.a) l.count = 0
    local st = redis.call('HMGET', l.k, 'w', 'c')
    if st[1] and tonumber(st[1]) == l.idx then l.count = tonumber(st[2]) end
    l.reset = (l.idx + 1) * l.a - now
  elseif l.alg == 3 then
    l.idx = math.floor(now / l.a) l.prev = 0 l.curr = 0
    local st = redis.call('HMGET', l.k, 'w', 'p', 'c')
    if st[1] then
      local j = tonumber(st[1])
      if j == l.idx then l.prev = tonumber(st[2]) l.curr = tonumber(st[3])
      elseif j + 1 == l.idx then l.prev = tonumber(st[3]) end
    end
    l.left = l.a - (now - l.idx * l.a)
  else
    redis.call('ZREMRANGEBYSCORE', l.k, '-inf', string.format('%.0f', now - l.a))
    l.count = redis.call('ZCARD', l.k)
  end
  L[i] = l
end
-- The decision of one limit for `cost` at now, without writing its state.
local function check(l, cost)
  local alg = l.alg
  if alg == 1 then
    local t_, tau = l.a, l.b
    local tat = l.tat
    if tat < now then tat = now end
    local diff = tat + t_ * cost - now
    if diff > tau or l.c == 0 then
      local avail = tau - (tat - now)
      if avail < 0 then avail = 0 end
      local retry = -1
      if t_ * cost <= tau and l.c > 0 then retry = diff - tau end
      return 0, avail / t_, tat - now, retry
    end
    return 1, (tau - diff) / t_, diff, -1
  elseif alg == 2 then
    local limit = l.b
    if l.count + cost > limit then
      local retry = -1
      if cost <= limit then retry = l.reset end
      local left = limit - l.count
      if left < 0 then left = 0 end
      return 0, left, l.reset, retry
    end
    return 1, limit - l.count - cost, l.reset, -1
  elseif alg == 3 then
    local w, limit, prev, curr, left = l.a, l.b, l.prev, l.curr, l.left
    local est_w = prev * left + curr * w
    local cap = limit - cost
    if cap < 0 then cap = 0 end
    local admit_w = cap * w
    if cost > limit or est_w > admit_w then
      local remaining = limit * w - est_w
      if remaining < 0 then remaining = 0 end
      local retry = -1
      if cost <= limit then
        local need_w = est_w - admit_w
        if prev > 0 and need_w <= prev * left then
          retry = math.ceil(need_w / prev)
        else
          local into_next = 0
          if curr > cap then into_next = math.ceil((curr - cap) * w / curr) end
          retry = left + into_next
        end
      end
      local reset = left
      if curr > 0 then reset = left + w end
      return 0, remaining / w, reset, retry
    end
    return 1, math.floor((limit * w - est_w - cost * w) / w), left + w, -1
  else
    local w, limit = l.a, l.b
    if l.count + cost > limit then
      local retry = -1
      if cost <= limit then
        local e = redis.call('ZRANGE', l.k, l.count + cost - limit - 1, l.count + cost - limit - 1, 'WITHSCORES')
        retry = tonumber(e[2]) + w - now
      end
      local last = redis.call('ZRANGE', l.k, -1, -1, 'WITHSCORES')
      local reset = 0
      if last[2] then reset = tonumber(last[2]) + w - now end
      local left = limit - l.count
      if left < 0 then left = 0 end
      return 0, left, reset, retry
    end
    return 1, limit - l.count - cost, w, -1
  end
end
local out, k = {}, 0
for j = 4 * n + 1, #ARGV do
  local cost = ARGV[j] + 0
  local all = true
  for i = 1, n do
    local l = L[i]
    l.da, l.dr, l.ds, l.dy = check(l, cost)
    if l.da == 0 then all = false end
  end
  if all then
    out[k + 1] = 0
    for i = 1, n do
      local l = L[i]
      out[k + 2 * i] = l.dr out[k + 2 * i + 1] = l.ds
      l.changed = true
      if l.alg == 1 then
        local tat = l.tat
        if tat < now then tat = now end
        l.tat = tat + l.a * cost
      elseif l.alg == 2 then l.count = l.count + cost
      elseif l.alg == 3 then l.curr = l.curr + cost
      else
        local stamp = string.format('%.0f', now)
        for m = 1, cost do
          redis.call('ZADD', l.k, stamp, stamp .. ':' .. (l.count + m))
        end
        l.count = l.count + cost
      end
    end
    k = k + 1 + 2 * n
  else
    out[k + 1] = -1
    for i = 1, n do
      local l = L[i]
      if l.da == 1 then l.da, l.dr, l.ds, l.dy = check(l, 0) end
      local b = k + 4 * i - 2
      out[b] = l.da out[b + 1] = l.dr out[b + 2] = l.ds out[b + 3] = l.dy
    end
    k = k + 1 + 4 * n
  end
end
for i = 1, n do
  local l = L[i]
  if l.changed then
    if l.alg == 1 then
      local v = l.tat
      local px = 1000
      if v - now > 999000 then
        px = math.ceil((v - now) / 1000) + 1
        if px >= 9007199254740992 or px % 100000000 == 0 then px = string.format('%.0f', px) end
      end
      if v >= 9007199254740992 or v % 100000000 == 0 then v = string.format('%.0f', v) end
      redis.call('SET', l.k, v, 'PX', px)
    elseif l.alg == 2 then
      redis.call('HSET', l.k, 'w', string.format('%.0f', l.idx), 'c', l.count)
      redis.call('PEXPIRE', l.k, math.ceil(l.reset / 1000) + 1)
    elseif l.alg == 3 then
      redis.call('HSET', l.k, 'w', string.format('%.0f', l.idx), 'p', l.prev, 'c', l.curr)
      redis.call('PEXPIRE', l.k, math.ceil((l.left + l.a) / 1000) + 1)
    else
      redis.call('PEXPIRE', l.k, math.ceil(l.a / 1000) + 1)
    end
  end
end
return out",
    )
});

/// Gives back delayed admissions' turns. KEYS = GCRA states; ARGV = the time to take back
/// from each (µs). A TAT given back to the past is deleted (it decides as "now").
static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_refund",
        format!(
            "{NOW}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local back = tat - tonumber(ARGV[i])
    if back <= now then redis.call('DEL', KEYS[i])
    else redis.call('SET', KEYS[i], string.format('%.0f', back), 'PX', math.max(math.ceil((back - now) / 1000) + 1, 1000)) end
  end
end
return 0"
        ),
    )
});

/// Rate-limit state in Redis: every instance pointed at the same Redis shares one quota.
///
/// Each decision is one `EVALSHA` of a Lua script doing the same maths as the memory backend
/// atomically, on Redis' own clock (`TIME`), so the fleet agrees on time. A refusal writes
/// nothing. Keys are `{prefix}rl:{{policy/key}}:{algorithm}` with the client key escaped
/// (see `turret_redis::KeyBuilder`), so each runs on Redis Cluster and a client cannot reach
/// another client's key; a plan's other limits add their name,
/// `{prefix}rl:{{policy/key}}:{limit}:{algorithm}`, in the same hash slot, so that one script
/// decides every limit of a request at once, all-or-nothing. Keys expire when their quota
/// is whole again (GCRA keys: not before a second). The quota travels with each call, so a
/// quota changed at run time applies fleet-wide from the next decision.
///
/// # Batching a hot key
///
/// While a call for a key is on its way, further requests of the same key wait for it and
/// then go together in the next call: one `EVALSHA` decides them in arrival order at one
/// instant, exactly as if they had come one by one (group commit). A key with one request at
/// a time waits for nothing extra; a hot key — a large client, an office behind one NAT, a
/// flood — costs Redis one call per round trip instead of one per request. At most
/// [`max_batch`](Self::max_batch) requests (128) go in one call; beyond that a request makes
/// its own call. When a call fails, the requests queued behind it get the same error at once
/// rather than waiting for another timeout.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    redis: Redis,
    max_batch: usize,
    batches: Arc<Batches>,
}

/// A decision's answer, sent to the request waiting for it.
type Reply = oneshot::Sender<Result<Outcome, BackendError>>;

/// The keys with a call on its way, and the requests queued for each one's next call.
#[derive(Default)]
struct Batches {
    keys: Mutex<HashMap<String, Queued>>,
}

impl fmt::Debug for Batches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batches")
            .field("keys_in_flight", &self.lock().len())
            .finish()
    }
}

impl Batches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queued>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one call decides: the Redis keys of a request's limits, the plan, the delay mode.
#[derive(Clone)]
struct Job {
    keys: Arc<[String]>,
    plan: Plan,
    max_delay_us: u64,
}

impl Job {
    /// Whether requests of `other` may go in the same call.
    fn same(&self, other: &Job) -> bool {
        self.max_delay_us == other.max_delay_us
            && self.plan == other.plan
            && self.keys == other.keys
    }
}

/// The requests waiting for a key's next call, and what they are decided with.
struct Queued {
    job: Job,
    waiting: Vec<(u32, Reply)>,
}

impl RedisBackend {
    /// A backend over a shared Redis handle.
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            max_batch: DEFAULT_MAX_BATCH,
            batches: Arc::default(),
        }
    }

    /// At most this many requests of one key decided by one call (default 128); `1` makes
    /// one call per request.
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Loads the scripts on every node ahead of the first decision (optional).
    pub async fn preload(&self) -> Result<(), BackendError> {
        self.redis
            .preload(&[&GCRA, &FIXED, &SLIDING, &LOG, &MULTI_GCRA, &MULTI, &REFUND])
            .await
            .map_err(|e| BackendError::new(e.to_string(), e.is_unavailable()))
    }

    /// The Redis key of `key` under `policy` for `algorithm` (a policy's own limit).
    pub fn redis_key(&self, policy: &str, key: &str, algorithm: Algorithm) -> String {
        self.limit_key(policy, key, "", algorithm)
    }

    /// The Redis key of `key` under `policy` for its limit `part` (empty: the policy's own).
    fn limit_key(&self, policy: &str, key: &str, part: &str, algorithm: Algorithm) -> String {
        let mut b = self.redis.key("rl").tag(Self::tag(policy, key));
        if !part.is_empty() {
            b = b.part(part);
        }
        b.part(algorithm.as_str()).build()
    }

    /// The hash tag of `key` under `policy`: every limit's key has it.
    fn tag(policy: &str, key: &str) -> Vec<u8> {
        let mut tag = Vec::with_capacity(policy.len() + key.len() + 1);
        tag.extend_from_slice(policy.as_bytes());
        tag.push(b'/');
        tag.extend_from_slice(key.as_bytes());
        tag
    }

    /// The Redis keys of `key`'s limits of `plan` under `policy`, in the plan's order.
    pub fn plan_keys(&self, policy: &str, key: &str, plan: &Plan) -> Vec<String> {
        self.keys_of(policy, key, plan).to_vec()
    }

    /// [`plan_keys`](Self::plan_keys) for a decision: the prefix and the escaped tag made
    /// once for every limit, the keys in one allocation besides their own.
    fn keys_of(&self, policy: &str, key: &str, plan: &Plan) -> Arc<[String]> {
        let limits = plan.limits();
        if let [l] = limits {
            return Arc::new([self.limit_key(policy, key, l.part(policy), l.quota().algorithm())]);
        }
        // What `limit_key` builds: the stem, then `part` for each of `:part`, `:algorithm`.
        let stem = self.redis.key("rl").tag(Self::tag(policy, key)).build();
        limits
            .iter()
            .map(|l| {
                let part = l.part(policy);
                let algorithm = l.quota().algorithm().as_str();
                let mut k = String::with_capacity(stem.len() + part.len() + algorithm.len() + 2);
                k.push_str(&stem);
                if !part.is_empty() {
                    k.push(':');
                    push_escaped(&mut k, part.as_bytes());
                }
                k.push(':');
                push_escaped(&mut k, algorithm.as_bytes());
                k
            })
            .collect()
    }
}

/// The default of [`RedisBackend::max_batch`].
const DEFAULT_MAX_BATCH: usize = 128;

fn redis_error(e: turret_redis::Error) -> BackendError {
    BackendError::new(e.to_string(), e.is_unavailable())
}

/// One script call deciding `costs` in order for `job`.
async fn call(
    redis: &Redis,
    job: &Job,
    costs: impl Iterator<Item = u32>,
) -> Result<Vec<Outcome>, BackendError> {
    let limits = job.plan.limits();
    if limits.len() == 1 && job.max_delay_us == 0 {
        return call_one(redis, &job.keys[0], limits[0].quota(), costs).await;
    }
    let (script, params) = multi_params(limits, job.max_delay_us);
    let mut call = script.prepare();
    for key in job.keys.iter() {
        call = call.key(key.as_str());
    }
    for p in params {
        call = call.arg(p);
    }
    let mut n = 0;
    for cost in costs {
        call = call.arg(cost);
        n += 1;
    }
    let reply: Value = call.invoke(redis).await.map_err(redis_error)?;
    let outcomes = match &reply {
        Value::Array(items) => multi_outcomes(items, limits, n),
        _ => None,
    };
    outcomes.ok_or_else(|| {
        BackendError::new(
            format!(
                "unexpected reply from {} for {n} requests of {} limits: {reply:?}",
                script.name(),
                limits.len()
            ),
            false,
        )
    })
}

/// The outcomes of `n` requests in a reply of [`MULTI_GCRA`] or [`MULTI`], read in place:
/// per request, an admitted one's delay µs and {remaining, reset_us} per limit, or -1 and a
/// refused one's {allowed, remaining, reset_us, retry_us (-1: never)} per limit. `None`
/// unless the reply is exactly that.
fn multi_outcomes(items: &[Value], limits: &[Limit], n: usize) -> Option<Vec<Outcome>> {
    let non_neg = |v: i64| v.max(0) as u64;
    let mut outcomes = Vec::with_capacity(n);
    let mut rest = items;
    for _ in 0..n {
        let (Value::Int(first), tail) = rest.split_first()? else {
            return None;
        };
        let outcome = if *first >= 0 {
            let (these, tail) = tail.split_at_checked(2 * limits.len())?;
            rest = tail;
            let decisions = these
                .chunks_exact(2)
                .zip(limits)
                .map(|(d, l)| {
                    let [Value::Int(remaining), Value::Int(reset)] = *d else {
                        return None;
                    };
                    Some(Decision::from_micros(
                        true,
                        l.quota().count(),
                        non_neg(remaining),
                        non_neg(reset),
                        None,
                    ))
                })
                .collect::<Option<SmallVec<[Decision; 2]>>>()?;
            Outcome::new(decisions, Duration::from_micros(non_neg(*first)))
        } else {
            let (these, tail) = tail.split_at_checked(4 * limits.len())?;
            rest = tail;
            let decisions = these
                .chunks_exact(4)
                .zip(limits)
                .map(|(d, l)| decision(d, l.quota()))
                .collect::<Option<SmallVec<[Decision; 2]>>>()?;
            Outcome::new(decisions, Duration::ZERO)
        };
        outcomes.push(outcome);
    }
    rest.is_empty().then_some(outcomes)
}

/// The script deciding several limits at once, or any in delay mode, and its arguments
/// before the costs: [`MULTI_GCRA`] when every limit is GCRA, [`MULTI`] otherwise (no delay
/// then: delay mode needs every limit GCRA).
fn multi_params(limits: &[Limit], max_delay_us: u64) -> (&'static Script, SmallVec<[u64; 16]>) {
    let mut params = SmallVec::new();
    if limits
        .iter()
        .all(|l| l.quota().algorithm() == Algorithm::Gcra)
    {
        params.push(max_delay_us);
        for l in limits {
            let q = l.quota();
            params.extend([
                q.emission_interval_micros(),
                q.tolerance_micros(),
                u64::from(q.count()),
            ]);
        }
        return (&MULTI_GCRA, params);
    }
    debug_assert_eq!(max_delay_us, 0, "delay mode needs every limit GCRA");
    for l in limits {
        let q = l.quota();
        match q.algorithm() {
            Algorithm::Gcra => params.extend([
                1,
                q.emission_interval_micros(),
                q.tolerance_micros(),
                u64::from(q.count()),
            ]),
            alg => params.extend([
                match alg {
                    Algorithm::FixedWindow => 2,
                    Algorithm::SlidingWindow => 3,
                    _ => 4,
                },
                q.period_micros(),
                u64::from(q.count()),
                0,
            ]),
        }
    }
    (&MULTI, params)
}

/// One decision of a script's reply, `{allowed, remaining, reset_us, retry_us (-1: never)}`,
/// read in place; `None` unless it is four integers.
fn decision(d: &[Value], quota: &Quota) -> Option<Decision> {
    let non_neg = |v: i64| v.max(0) as u64;
    let [
        Value::Int(allowed),
        Value::Int(remaining),
        Value::Int(reset),
        Value::Int(retry),
    ] = *d
    else {
        return None;
    };
    Some(Decision::from_micros(
        allowed == 1,
        quota.count(),
        non_neg(remaining),
        non_neg(reset),
        (allowed != 1 && retry >= 0).then(|| non_neg(retry)),
    ))
}

/// One call of a single-quota script deciding `costs` in order for `redis_key`.
async fn call_one(
    redis: &Redis,
    redis_key: &str,
    quota: &Quota,
    costs: impl Iterator<Item = u32>,
) -> Result<Vec<Outcome>, BackendError> {
    let script = match quota.algorithm() {
        Algorithm::Gcra => &*GCRA,
        Algorithm::FixedWindow => &*FIXED,
        Algorithm::SlidingWindow => &*SLIDING,
        Algorithm::SlidingLog => &*LOG,
    };
    let mut call = script.key(redis_key);
    call = match quota.algorithm() {
        Algorithm::Gcra => call
            .arg(quota.emission_interval_micros())
            .arg(quota.tolerance_micros())
            .arg(quota.count()),
        _ => call.arg(quota.period_micros()).arg(quota.count()),
    };
    let mut n = 0;
    for cost in costs {
        call = call.arg(cost);
        n += 1;
    }
    let reply: Value = call.invoke(redis).await.map_err(redis_error)?;
    let outcomes = match &reply {
        Value::Array(items) if items.len() == 4 * n => items
            .chunks_exact(4)
            .map(|d| decision(d, quota).map(Outcome::single))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    };
    outcomes.ok_or_else(|| {
        BackendError::new(
            format!(
                "unexpected reply from {} for {n} requests: {reply:?}",
                script.name()
            ),
            false,
        )
    })
}

/// Decides `batch`, then whatever queued for the key meanwhile, one call per round, until
/// nothing waits; then the key leaves the map.
async fn drive(
    redis: Redis,
    batches: Arc<Batches>,
    batch_key: String,
    job: Job,
    mut batch: Vec<(u32, Reply)>,
) {
    // Should this task end early (its runtime shutting down), the key must not stay
    // "in flight" with nobody to call for it: the guard removes it, and the queued requests
    // get an error as their answers are dropped.
    let mut guard = InFlight {
        batches: &batches,
        batch_key: &batch_key,
        armed: true,
    };
    loop {
        let result = call(&redis, &job, batch.iter().map(|(cost, _)| *cost)).await;
        let failed = match result {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
                None
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
                Some(e)
            }
        };
        guard.armed = false;
        match next_batch(&batches, &batch_key, failed) {
            Some(next) => {
                guard.armed = true;
                batch = next;
            }
            None => return,
        }
    }
}

/// After a call for `batch_key`: the requests queued meanwhile, to send next; or `None`, the
/// key having left the map because nothing waits or because the call `failed` (the queued
/// requests then get its error at once, not after another timeout; later ones start afresh).
fn next_batch(
    batches: &Batches,
    batch_key: &str,
    failed: Option<BackendError>,
) -> Option<Vec<(u32, Reply)>> {
    let mut keys = batches.lock();
    let queued = keys.get_mut(batch_key)?;
    if queued.waiting.is_empty() {
        keys.remove(batch_key);
        return None;
    }
    let next = std::mem::take(&mut queued.waiting);
    let Some(e) = failed else {
        return Some(next);
    };
    keys.remove(batch_key);
    drop(keys);
    for (_, reply) in next {
        let _ = reply.send(Err(e.clone()));
    }
    None
}

/// The first request of a key with no call in flight: it makes the call itself (no task, no
/// channel), then hands the requests that queued meanwhile to a task that drives the key.
struct Lead {
    redis: Redis,
    batches: Arc<Batches>,
    batch_key: String,
    job: Job,
    runtime: tokio::runtime::Handle,
    /// Until the call has come back: dropped before, the lead still hands over its queue.
    pending: bool,
}

impl Lead {
    async fn decide(mut self, cost: u32) -> Result<Outcome, BackendError> {
        let result = call(&self.redis, &self.job, std::iter::once(cost)).await;
        self.pending = false;
        self.hand_over(result.as_ref().err().cloned());
        result?
            .pop()
            .ok_or_else(|| BackendError::new("no decision in the reply", false))
    }

    fn hand_over(&self, failed: Option<BackendError>) {
        if let Some(next) = next_batch(&self.batches, &self.batch_key, failed) {
            self.runtime.spawn(drive(
                self.redis.clone(),
                self.batches.clone(),
                self.batch_key.clone(),
                self.job.clone(),
                next,
            ));
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        // Cancelled mid-call (the client went away): whoever queued behind still needs its
        // call.
        if self.pending {
            self.hand_over(None);
        }
    }
}

/// Removes a key from the in-flight map if its driving task ends before it does.
struct InFlight<'a> {
    batches: &'a Batches,
    batch_key: &'a str,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.batches.lock().remove(self.batch_key);
        }
    }
}

impl Backend for RedisBackend {
    fn decide(
        &self,
        policy: &str,
        key: &str,
        plan: &Plan,
        cost: u32,
        max_delay: Duration,
    ) -> Decide {
        let max_delay_us = if plan.is_all_gcra() {
            u64::try_from(max_delay.as_micros()).unwrap_or(u64::MAX)
        } else {
            0
        };
        let keys = self.keys_of(policy, key, plan);
        // A call decides one plan in one mode: the first key names the batch, and the rest of
        // the job must match for a request to join it.
        let plan_mode = keys.len() > 1 || max_delay_us > 0;
        let mut batch_key = String::with_capacity(keys[0].len() + 5);
        batch_key.push_str(&keys[0]);
        if plan_mode {
            batch_key.push_str("\u{0}plan");
        }
        let job = Job {
            keys,
            plan: plan.clone(),
            max_delay_us,
        };
        let redis = self.redis.clone();
        if self.max_batch > 1
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let mut batches = self.batches.lock();
            match batches.get_mut(&batch_key) {
                Some(queued) if queued.job.same(&job) && queued.waiting.len() < self.max_batch => {
                    let (reply, answer) = oneshot::channel();
                    queued.waiting.push((cost, reply));
                    return Decide::Pending(Box::pin(async move {
                        answer.await.unwrap_or_else(|_| {
                            Err(BackendError::new("the batched call was dropped", true))
                        })
                    }));
                }
                // A full batch, or another plan under the same key: a call of its own.
                Some(_) => {}
                None => {
                    batches.insert(
                        batch_key.clone(),
                        Queued {
                            job: job.clone(),
                            waiting: Vec::new(),
                        },
                    );
                    drop(batches);
                    let lead = Lead {
                        redis,
                        batches: self.batches.clone(),
                        batch_key,
                        job,
                        runtime,
                        pending: true,
                    };
                    return Decide::Pending(Box::pin(lead.decide(cost)));
                }
            }
        }
        Decide::Pending(Box::pin(async move {
            let mut outcomes = call(&redis, &job, std::iter::once(cost)).await?;
            outcomes
                .pop()
                .ok_or_else(|| BackendError::new("no decision in the reply", false))
        }))
    }

    fn refund(&self, policy: &str, key: &str, plan: &Plan, cost: u32) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut keys = Vec::new();
        let mut backs = Vec::new();
        for l in plan.limits() {
            let q = l.quota();
            if q.algorithm() == Algorithm::Gcra {
                keys.push(self.limit_key(policy, key, l.part(policy), Algorithm::Gcra));
                backs.push(q.emission_interval_micros().saturating_mul(u64::from(cost)));
            }
        }
        if keys.is_empty() {
            return;
        }
        let redis = self.redis.clone();
        runtime.spawn(async move {
            let mut call = REFUND.prepare();
            for key in &keys {
                call = call.key(key.as_str());
            }
            for back in &backs {
                call = call.arg(*back);
            }
            if let Err(e) = call.invoke::<i64>(&redis).await {
                tracing::debug!(error = %e, "rate limit: a delayed request's turn was not given back");
            }
        });
    }
}

#[cfg(test)]
mod script_tests;

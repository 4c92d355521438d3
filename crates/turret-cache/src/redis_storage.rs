//! [`RedisStorage`]: the response cache on Redis (one node or a cluster), shared by a fleet.
//!
//! # Example
//!
//! ```no_run
//! use turret_cache::{RedisStorage, ResponseCacheLayer};
//! use turret_redis::{Redis, RedisConfig};
//!
//! # async fn run() -> Result<(), turret_redis::Error> {
//! let redis = Redis::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?).await?;
//! // Every instance pointed at this Redis shares one cache.
//! let layer = ResponseCacheLayer::with_storage(RedisStorage::new(redis));
//! # let _ = layer;
//! # Ok(()) }
//! ```

use bytes::Bytes;
use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use tokio::task::JoinSet;
use turret_redis::{Redis, Script, redis};

use crate::{
    CacheStorage, CachedResponse, MAX_VARIANTS, Purge, StorageError, StorageFuture, Variants,
};

/// The hash field holding the soft-purge time (ms since the Unix epoch).
const STALE_FIELD: &str = "!stale";

/// Members of a tag index read per `ZSCAN`.
const SCAN_BATCH: usize = 256;

/// Stores one variant. KEYS[1] = entry hash. ARGV = field, encoded response, response time
/// (ms), ttl (ms), most variants kept. Drops the variants with the oldest response times
/// beyond the bound (never the one just written), keeps the hash at least `ttl`.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "cache_put",
        r"
local h, f = KEYS[1], ARGV[1]
redis.call('HSET', h, f, ARGV[2], '!t' .. f, ARGV[3])
local others = {}
for _, n in ipairs(redis.call('HKEYS', h)) do
  if string.sub(n, 1, 1) ~= '!' and n ~= f then others[#others + 1] = n end
end
local excess = #others + 1 - tonumber(ARGV[5])
if excess > 0 then
  local olds = {}
  for i, n in ipairs(others) do
    olds[i] = { n, tonumber(redis.call('HGET', h, '!t' .. n) or '0') or 0 }
  end
  table.sort(olds, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[1] < b[1]
  end)
  for i = 1, excess do redis.call('HDEL', h, olds[i][1], '!t' .. olds[i][1]) end
else
  excess = 0
end
local ttl = tonumber(ARGV[4])
if redis.call('PTTL', h) < ttl then redis.call('PEXPIRE', h, ttl) end
return excess
",
    )
});

/// Indexes a key under a tag. KEYS[1] = tag index (a sorted set: member = primary key,
/// score = when its entry may expire, ms on Redis' clock). ARGV = primary key, ttl (ms).
/// Members whose entries have expired leave the index; the index expires with its last
/// member.
static TAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "cache_tag",
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local expires = now + ttl
local cur = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') or 0
if expires > cur then
  redis.call('ZADD', KEYS[1], string.format('%.0f', expires), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
",
    )
});

/// Marks an entry stale from ARGV[1] (ms) on, if it exists; keeps the latest mark and the
/// entry's TTL.
static MARK_STALE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "cache_mark_stale",
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local at = tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], '!stale') or '0') or 0
if at > cur then redis.call('HSET', KEYS[1], '!stale', ARGV[1]) end
return 1
",
    )
});

/// The response cache on Redis: every instance pointed at the same Redis (one node or a
/// cluster) shares one cache.
///
/// # Layout
///
/// - One hash per primary key, `{prefix}cache:{<key>}` (the escaped key is the hash tag,
///   see [`turret_redis::KeyBuilder`]). One field per Vary variant, named by the hex digest
///   of its secondary key and holding [`CachedResponse::encode`]; a field `!t<digest>` with
///   its response time; and `!stale`, the time of the latest soft purge
///   ([`Purge::MarkStale`]): variants received until then are returned stale from then on.
///   The hash expires with the longest TTL any put gave it.
/// - One sorted set per tag, `{prefix}cache-tag:{<tag>}`: the primary keys holding a
///   response with that tag, scored by when their entry may expire. Expired members leave
///   it on the next put of the tag, and it expires with its last member, so it stays
///   bounded by the live entries.
///
/// # Commands
///
/// - [`get`](CacheStorage::get): one `HGETALL`. A field that does not decode (foreign or
///   corrupt bytes) is skipped, logged and counted in `turret_cache_decode_errors_total`.
/// - [`put`](CacheStorage::put): one `EVALSHA` on the entry (store the variant, drop the
///   oldest beyond [`MAX_VARIANTS`], extend the TTL), then one `EVALSHA` per tag of the
///   response (tags live in other cluster slots).
/// - [`invalidate`](CacheStorage::invalidate): `DEL` ([`Purge::Remove`]) or one `EVALSHA`
///   setting `!stale` on an existing entry ([`Purge::MarkStale`]).
/// - [`invalidate_tag`](CacheStorage::invalidate_tag): `ZSCAN … COUNT 256` over the tag's
///   index; per batch, with [`Purge::Remove`], one `ZREM` of the batch from the index, then
///   one command per key, sent concurrently. No command spans two slots, no `KEYS`/`SCAN`.
///
/// A Redis error (unreachable, timeout, open circuit breaker) is a [`StorageError`]: the
/// layer answers from the origin.
///
/// # Decoded entries kept
///
/// A hit still reads the entry from Redis, but an entry read before is not decoded again:
/// each storage keeps the responses it decoded, by primary key, next to the exact bytes they
/// came from, and a variant whose bytes Redis returns unchanged is the response decoded
/// last time (with the hit fields already made for it). Any other bytes are decoded. So
/// what a hit serves is always what Redis holds now; only the decoding is saved. The kept
/// responses are bounded by [`keep_decoded`](Self::keep_decoded) (default
/// [`DEFAULT_KEEP_DECODED`] bytes of stored entries; they share their bytes with the
/// responses a request holds).
#[derive(Clone)]
pub struct RedisStorage {
    redis: Redis,
    /// Bodies at least this large are LZ4-compressed (feature `compression`).
    compress_over: Option<usize>,
    /// The responses decoded last, by primary key (`None`: decode every read).
    decoded: Option<Arc<Decoded>>,
}

/// Default bound of the decoded responses a [`RedisStorage`] keeps, in bytes of stored
/// entries (see [`RedisStorage::keep_decoded`]).
pub const DEFAULT_KEEP_DECODED: u64 = 16 * 1024 * 1024;

/// One decoded variant and the exact bytes it was decoded from.
#[derive(Clone)]
struct Known {
    raw: Bytes,
    response: Arc<CachedResponse>,
}

/// The variants of one entry hash as last read: each with its bytes, sorted by response
/// time, and the same responses as a get returns them.
struct KnownVariants {
    known: Box<[Known]>,
    variants: Variants,
}

/// The weight of an entry's kept variants: their stored bytes and the key.
#[derive(Clone)]
struct KnownWeight;

/// What a kept variant costs beyond its bytes (the decoded header map, the `Arc`s).
const KNOWN_OVERHEAD: u64 = 256;

impl quick_cache::Weighter<String, Arc<KnownVariants>> for KnownWeight {
    fn weight(&self, key: &String, kept: &Arc<KnownVariants>) -> u64 {
        let bytes: usize = kept.known.iter().map(|k| k.raw.len()).sum();
        (key.len() + bytes) as u64 + KNOWN_OVERHEAD * kept.known.len() as u64
    }
}

/// Kept decoded variants by entry hash (the Redis key).
type Decoded =
    quick_cache::sync::Cache<String, Arc<KnownVariants>, KnownWeight, foldhash::fast::RandomState>;

fn decoded_cache(max_bytes: u64) -> Option<Arc<Decoded>> {
    if max_bytes == 0 {
        return None;
    }
    Some(Arc::new(Decoded::with(
        usize::try_from(max_bytes / 4096)
            .unwrap_or(usize::MAX)
            .max(16),
        max_bytes,
        KnownWeight,
        foldhash::fast::RandomState::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    )))
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("redis", &self.redis)
            .field("decoded_kept", &self.decoded.as_ref().map(|d| d.len()))
            .finish()
    }
}

impl RedisStorage {
    /// A storage on this Redis handle (its key prefix namespaces the cache).
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            compress_over: None,
            decoded: decoded_cache(DEFAULT_KEEP_DECODED),
        }
    }

    /// Bounds the decoded responses kept so that a hit on an unchanged entry is not decoded
    /// again (see [the type docs](Self#decoded-entries-kept)), in bytes of stored entries;
    /// `0` decodes every read. Clones share what is kept; this gives the storage its own.
    pub fn keep_decoded(mut self, max_bytes: u64) -> Self {
        self.decoded = decoded_cache(max_bytes);
        self
    }

    /// Compresses bodies of at least `bytes` with LZ4 before they go to Redis (less memory
    /// and network for large JSON or HTML; about a millisecond per megabyte to compress).
    /// Readers need the `compression` feature too: an instance without it reads such an
    /// entry as a miss.
    #[cfg(feature = "compression")]
    pub fn compress_over(mut self, bytes: usize) -> Self {
        self.compress_over = Some(bytes);
        self
    }

    fn encode(&self, response: &CachedResponse) -> Vec<u8> {
        match self.compress_over {
            #[cfg(feature = "compression")]
            Some(threshold) => response.encode_compressed(threshold),
            _ => response.encode(),
        }
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Loads the storage's scripts on every node ahead of the first put (optional: a call
    /// recovers from `NOSCRIPT` by itself).
    pub async fn preload(&self) -> Result<(), StorageError> {
        self.redis
            .preload(&[&PUT, &TAG, &MARK_STALE])
            .await
            .map_err(StorageError::new)
    }

    /// The Redis key of the hash holding `key`'s responses.
    pub fn entry_key(&self, key: &str) -> String {
        entry_key(&self.redis, key)
    }

    /// The Redis key of the index of the keys holding a response tagged `tag`.
    pub fn tag_key(&self, tag: &str) -> String {
        tag_key(&self.redis, tag)
    }
}

fn entry_key(redis: &Redis, key: &str) -> String {
    redis.key("cache").tag(key).build()
}

fn tag_key(redis: &Redis, tag: &str) -> String {
    redis.key("cache-tag").tag(tag).build()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The hash field of a variant: the hex digest of its secondary key.
pub(crate) fn variant_field(response: &CachedResponse) -> String {
    use std::fmt::Write as _;
    let mut field = String::with_capacity(32);
    for b in response.secondary_key_digest() {
        let _ = write!(field, "{b:02x}");
    }
    field
}

/// The bytes of a reply element, when it is a string.
fn bytes(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// The bytes of a reply element, when it is a string, borrowed.
fn bytes_ref(value: &redis::Value) -> Option<&[u8]> {
    match value {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Field/value pairs of an `HGETALL` reply (a flat array in RESP2, a map in RESP3).
fn pairs(reply: redis::Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    match reply {
        redis::Value::Map(entries) => entries
            .into_iter()
            .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
            .collect(),
        redis::Value::Array(items) => {
            let mut items = items.into_iter();
            let mut out = Vec::with_capacity(items.len() / 2);
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
                    out.push((k, v));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Calls `f` on each pair of [`pairs`], borrowed, while it returns true; false if one did
/// not.
fn all_pairs(reply: &redis::Value, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> bool {
    match reply {
        redis::Value::Map(entries) => {
            entries
                .iter()
                .all(|(k, v)| match (bytes_ref(k), bytes_ref(v)) {
                    (Some(k), Some(v)) => f(k, v),
                    _ => true,
                })
        }
        redis::Value::Array(items) => {
            items
                .chunks_exact(2)
                .all(|kv| match (bytes_ref(&kv[0]), bytes_ref(&kv[1])) {
                    (Some(k), Some(v)) => f(k, v),
                    _ => true,
                })
        }
        _ => true,
    }
}

/// The kept variants' responses, if the reply holds exactly their bytes (each kept variant
/// once) and no soft purge.
fn unchanged(kept: &KnownVariants, reply: &redis::Value) -> Option<Variants> {
    // Which kept variants a reply value matched (at most `MAX_VARIANTS` are stored; a longer
    // list is never kept as unchanged).
    let mut matched = 0u64;
    if kept.known.len() > 64 {
        return None;
    }
    let same = all_pairs(reply, |field, value| {
        if field.starts_with(b"!") {
            return field != STALE_FIELD.as_bytes();
        }
        let hit = kept
            .known
            .iter()
            .enumerate()
            .find(|(i, k)| matched & (1 << i) == 0 && k.raw[..] == *value);
        match hit {
            Some((i, _)) => {
                matched |= 1 << i;
                true
            }
            None => false,
        }
    });
    (same && matched.count_ones() as usize == kept.known.len()).then(|| kept.variants.clone())
}

/// The responses of an entry hash (`hash`): decodable variants (sorted by response time),
/// marked stale from the entry's soft purge on. A variant whose bytes are those of a
/// variant kept in `decoded` is that variant's response, not decoded again.
fn variants_of(hash: &str, reply: redis::Value, decoded: Option<&Decoded>) -> Variants {
    let kept = decoded.and_then(|d| d.get(hash));
    if let Some(out) = kept.as_deref().and_then(|k| unchanged(k, &reply)) {
        return out;
    }
    let mut stale_at: Option<Duration> = None;
    let mut variants: Vec<Known> = Vec::new();
    let mut decoded_now = false;
    for (field, value) in pairs(reply) {
        if field == STALE_FIELD.as_bytes() {
            stale_at = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis);
            continue;
        }
        if field.starts_with(b"!") {
            continue;
        }
        if let Some(known) = kept
            .as_deref()
            .and_then(|kept| kept.known.iter().find(|k| k.raw[..] == value[..]))
        {
            variants.push(known.clone());
            continue;
        }
        let raw = Bytes::from(value);
        match CachedResponse::decode_shared(raw.clone()) {
            Ok(v) => {
                decoded_now = true;
                variants.push(Known {
                    raw,
                    response: Arc::new(v),
                });
            }
            Err(e) => {
                metrics::counter!("turret_cache_decode_errors_total").increment(1);
                tracing::warn!(
                    key = %hash,
                    field = %String::from_utf8_lossy(&field),
                    error = %e,
                    "skipping a cache variant that does not decode"
                );
            }
        }
    }
    variants.sort_by_key(|k| k.response.response_time());
    let fresh: Variants = variants.iter().map(|k| k.response.clone()).collect();
    if let Some(decoded) = decoded {
        // Keep exactly what Redis holds now: new variants in, vanished ones out.
        if decoded_now
            || kept
                .as_ref()
                .is_some_and(|k| k.known.len() != variants.len())
        {
            if variants.is_empty() {
                decoded.remove(hash);
            } else {
                let kept = KnownVariants {
                    known: variants.into_boxed_slice(),
                    variants: fresh.clone(),
                };
                decoded.insert(hash.to_owned(), Arc::new(kept));
            }
        }
    }
    match stale_at {
        None => fresh,
        Some(at) => fresh
            .iter()
            .map(|v| {
                if v.response_time() <= at {
                    Arc::new(v.stale_at(at))
                } else {
                    v.clone()
                }
            })
            .collect(),
    }
}

/// Invalidates one key; how many keys held responses (1 or 0).
async fn invalidate(redis: &Redis, key: &str, purge: Purge) -> Result<usize, StorageError> {
    let entry = entry_key(redis, key);
    let held: i64 = match purge {
        Purge::Remove => redis
            .query(redis::cmd("DEL").arg(&entry))
            .await
            .map_err(StorageError::new)?,
        Purge::MarkStale(at) => MARK_STALE
            .key(&entry)
            .arg(millis(at))
            .invoke(redis)
            .await
            .map_err(StorageError::new)?,
    };
    Ok(usize::from(held > 0))
}

/// Members of a `ZSCAN` reply page: `[cursor, [member, score, member, score, …]]`.
/// A tag index's members with their scores (kept as sent, to put a member back as it was).
type Scored = Vec<(String, Vec<u8>)>;

/// One `ZSCAN` page: the next cursor and the members with their scores.
fn scan_page(reply: redis::Value) -> Result<(u64, Scored), StorageError> {
    let redis::Value::Array(mut parts) = reply else {
        return Err(StorageError::new("unexpected ZSCAN reply"));
    };
    if parts.len() != 2 {
        return Err(StorageError::new("unexpected ZSCAN reply"));
    }
    let items = parts.pop();
    let cursor = parts
        .pop()
        .and_then(bytes)
        .and_then(|c| String::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| StorageError::new("unexpected ZSCAN cursor"))?;
    let pairs: Vec<(redis::Value, redis::Value)> = match items {
        Some(redis::Value::Array(items)) => {
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        Some(redis::Value::Map(items)) => items,
        _ => return Err(StorageError::new("unexpected ZSCAN members")),
    };
    let members = pairs
        .into_iter()
        .filter_map(|(m, score)| {
            let member = String::from_utf8(bytes(m)?).ok()?;
            let score = match score {
                redis::Value::Double(d) => d.to_string().into_bytes(),
                other => bytes(other)?,
            };
            Some((member, score))
        })
        .collect();
    Ok((cursor, members))
}

async fn invalidate_tag(redis: Redis, tag: String, purge: Purge) -> Result<usize, StorageError> {
    let index = tag_key(&redis, &tag);
    let mut cursor = 0u64;
    let mut held = 0;
    loop {
        let reply: redis::Value = redis
            .query(
                redis::cmd("ZSCAN")
                    .arg(&index)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_BATCH),
            )
            .await
            .map_err(StorageError::new)?;
        let (next, members) = scan_page(reply)?;
        if !members.is_empty() {
            let names: Vec<&str> = members.iter().map(|(m, _)| m.as_str()).collect();
            if purge == Purge::Remove {
                // Out of the index first: a put racing with this writes its entry before
                // indexing it, so either its entry is deleted below or it stays indexed.
                let _: i64 = redis
                    .query(redis::cmd("ZREM").arg(&index).arg(&names))
                    .await
                    .map_err(StorageError::new)?;
            }
            // One command per key (each in its own slot), all in flight at once over the
            // multiplexed connection.
            let mut batch = JoinSet::new();
            for (i, (member, _)) in members.iter().enumerate() {
                let (redis, member) = (redis.clone(), member.clone());
                batch.spawn(async move { (i, invalidate(&redis, &member, purge).await) });
            }
            let mut first_error = None;
            let mut failed = Vec::new();
            while let Some(done) = batch.join_next().await {
                let (i, result) = match done {
                    Ok(done) => done,
                    Err(e) => {
                        first_error.get_or_insert(StorageError::new(e));
                        continue;
                    }
                };
                match result {
                    Ok(n) => held += n,
                    Err(e) => {
                        failed.push(i);
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                if purge == Purge::Remove {
                    // The keys whose entries were not removed go back into the index (with
                    // their score, unless a racing put gave a later one), so that a retry of
                    // the invalidation finds them.
                    restore(&redis, &index, &members, &failed).await;
                }
                return Err(e);
            }
        }
        if next == 0 {
            return Ok(held);
        }
        cursor = next;
    }
}

/// Puts `members[failed]` back into the tag index `index` (`ZADD GT`: a later expiry that a
/// racing put wrote is kept). A task that panicked leaves no index: every member goes back.
async fn restore(redis: &Redis, index: &str, members: &[(String, Vec<u8>)], failed: &[usize]) {
    let back: Vec<&(String, Vec<u8>)> = if failed.is_empty() {
        members.iter().collect()
    } else {
        failed.iter().filter_map(|&i| members.get(i)).collect()
    };
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(index).arg("GT");
    for (member, score) in back {
        cmd.arg(score.as_slice()).arg(member);
    }
    if let Err(e) = redis.query::<i64>(&cmd).await {
        tracing::debug!(error = %e, "a failed tag invalidation's keys could not be re-indexed");
    }
}

impl CacheStorage for RedisStorage {
    fn get(&self, key: &str) -> StorageFuture<Variants> {
        let redis = self.redis.clone();
        let decoded = self.decoded.clone();
        let hash = entry_key(&redis, key);
        StorageFuture::new(async move {
            let reply: redis::Value = redis
                .query(redis::cmd("HGETALL").arg(&hash))
                .await
                .map_err(StorageError::new)?;
            Ok(variants_of(&hash, reply, decoded.as_deref()))
        })
    }

    fn put(&self, key: &str, response: Arc<CachedResponse>, ttl: Duration) -> StorageFuture<()> {
        let redis = self.redis.clone();
        let encoded = self.encode(&response);
        let key = key.to_owned();
        StorageFuture::new(async move {
            let ttl_ms = millis(ttl).max(1);
            let dropped: i64 = PUT
                .key(entry_key(&redis, &key))
                .arg(variant_field(&response))
                .arg(encoded)
                .arg(millis(response.response_time()))
                .arg(ttl_ms)
                .arg(MAX_VARIANTS)
                .invoke(&redis)
                .await
                .map_err(StorageError::new)?;
            if dropped > 0 {
                tracing::debug!(%key, dropped, "oldest cache variants dropped");
            }
            let mut tags: Vec<&String> = response.tags().iter().collect();
            tags.sort_unstable();
            tags.dedup();
            for tag in tags {
                let _: i64 = TAG
                    .key(tag_key(&redis, tag))
                    .arg(&key)
                    .arg(ttl_ms)
                    .invoke(&redis)
                    .await
                    .map_err(StorageError::new)?;
            }
            Ok(())
        })
    }

    fn invalidate(&self, key: &str, purge: Purge) -> StorageFuture<usize> {
        let redis = self.redis.clone();
        let key = key.to_owned();
        StorageFuture::new(async move { invalidate(&redis, &key, purge).await })
    }

    fn invalidate_tag(&self, tag: &str, purge: Purge) -> StorageFuture<usize> {
        StorageFuture::new(invalidate_tag(self.redis.clone(), tag.to_owned(), purge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> redis::Value {
        redis::Value::BulkString(s.to_vec())
    }

    #[test]
    fn foreign_replies_decode_to_nothing_without_panicking() {
        assert!(variants_of("k", redis::Value::Nil, None).is_empty());
        assert!(variants_of("k", redis::Value::Int(3), None).is_empty());
        // An odd-length array, a non-string field, corrupt bytes, a bad stale mark.
        let reply = redis::Value::Array(vec![
            bulk(b"abc"),
            bulk(b"TRC\x02garbage"),
            redis::Value::Int(1),
            bulk(b"x"),
            bulk(b"!stale"),
            bulk(b"not a number"),
            bulk(b"dangling"),
        ]);
        assert!(variants_of("k", reply.clone(), None).is_empty());
        let decoded = decoded_cache(1 << 20).unwrap();
        assert!(variants_of("k", reply, Some(&decoded)).is_empty());
        assert!(decoded.is_empty());
        assert!(scan_page(redis::Value::Nil).is_err());
        assert!(scan_page(redis::Value::Array(vec![bulk(b"x"), bulk(b"y")])).is_err());
        let (cursor, members) = scan_page(redis::Value::Array(vec![
            bulk(b"7"),
            redis::Value::Array(vec![bulk(b"a"), bulk(b"1"), bulk(b"b"), bulk(b"2")]),
        ]))
        .unwrap();
        assert_eq!(
            (cursor, members),
            (
                7,
                vec![
                    ("a".to_owned(), b"1".to_vec()),
                    ("b".to_owned(), b"2".to_vec())
                ]
            )
        );
    }
}

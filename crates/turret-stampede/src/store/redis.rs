//! The value store on Redis: one copy of each value for a whole fleet.

use std::{
    fmt,
    sync::{
        LazyLock,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use turret_redis::{Redis, Script, redis};

use super::{Entry, Put, StoreError, ValueStore};
use crate::clock::to_ms;

/// The fenced write: refuses a write whose fence is lower than the stored one.
/// KEYS[1] value hash; ARGV: bytes, fence, ttl ms, the encoded tags (read by a two-tier
/// store's L1 fills).
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stampede_put",
        r"
local new = tonumber(ARGV[2])
if new > 0 then
  local cur = tonumber(redis.call('HGET', KEYS[1], 'f') or '0') or 0
  if cur > new then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', ARGV[2], 't', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// One read of what a two-tier store's L1 copies: value, fence, tags, time to live (ms).
static GET_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stampede_get_entry",
        r"
local h = redis.call('HMGET', KEYS[1], 'v', 'f', 't')
if not h[1] then return {} end
return {h[1], h[2] or '0', h[3] or '', redis.call('PTTL', KEYS[1])}
",
    )
});

/// What [`RedisStore::get_entry`] read.
#[derive(Debug)]
pub(crate) struct StoredEntry {
    pub(crate) bytes: Bytes,
    pub(crate) fence: u64,
    /// `None`: unreadable tags (written by something else); the value must not be copied
    /// to an L1, which could not drop it on a tag invalidation.
    pub(crate) tags: Option<Vec<String>>,
    /// `None`: no expiry.
    pub(crate) ttl: Option<std::time::Duration>,
}

/// Adds a member to a tag set, keeping the set at least as long as the member.
static TAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stampede_tag",
        r"
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
",
    )
});

/// Values on Redis, one hash per key (`v`: the encoded value, `f`: its fence), expiring
/// with their ttl. Each tag is a set of value keys; invalidating a tag deletes its members
/// one command at a time (value and tag keys live in different cluster slots).
pub struct RedisStore {
    redis: Redis,
    degraded: AtomicBool,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.redis)
            .finish()
    }
}

impl RedisStore {
    /// A store on this Redis.
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            degraded: AtomicBool::new(false),
        }
    }

    fn value_key(&self, key: &str) -> String {
        self.redis.key("val").tag(key).build()
    }

    fn tag_key(&self, tag: &str) -> String {
        self.redis.key("tag").tag(tag).build()
    }

    fn observe<T>(&self, result: Result<T, turret_redis::Error>) -> Result<T, StoreError> {
        match result {
            Ok(v) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis value store reachable again");
                }
                Ok(v)
            }
            Err(e) if e.is_unavailable() => {
                metrics::counter!("turret_stampede_store_unavailable_total").increment(1);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis value store unreachable: reads miss, writes are dropped");
                }
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(e) => Err(StoreError::Backend(e.to_string())),
        }
    }
}

impl RedisStore {
    /// The handle.
    pub(crate) fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The value with its fence, tags and time to live, in one round trip.
    pub(crate) async fn get_entry(&self, key: &str) -> Result<Option<StoredEntry>, StoreError> {
        let reply: Result<redis::Value, _> =
            GET_ENTRY.key(self.value_key(key)).invoke(&self.redis).await;
        let redis::Value::Array(items) = self.observe(reply)? else {
            return Err(StoreError::Backend(
                "unexpected reply to a value read".into(),
            ));
        };
        let mut items = items.into_iter();
        let (Some(v), Some(f), Some(t), Some(ttl)) =
            (items.next(), items.next(), items.next(), items.next())
        else {
            return Ok(None);
        };
        let (Some(bytes), Some(fence), Some(tags)) = (bulk(v), bulk(f), bulk(t)) else {
            return Err(StoreError::Backend(
                "unexpected reply to a value read".into(),
            ));
        };
        let fence = std::str::from_utf8(&fence)
            .ok()
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        let ttl = match ttl {
            redis::Value::Int(ms) if ms >= 0 => {
                Some(std::time::Duration::from_millis(ms.unsigned_abs()))
            }
            _ => None,
        };
        Ok(Some(StoredEntry {
            bytes: Bytes::from(bytes),
            fence,
            tags: decode_tags(&tags),
            ttl,
        }))
    }
}

fn bulk(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// The tags as stored in the value hash: postcard of the list (empty for none).
fn encode_tags(tags: &[String]) -> Vec<u8> {
    if tags.is_empty() {
        return Vec::new();
    }
    postcard::to_allocvec(tags).unwrap_or_default()
}

/// `None` when the bytes are not a tag list.
fn decode_tags(bytes: &[u8]) -> Option<Vec<String>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    postcard::from_bytes(bytes).ok()
}

impl ValueStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let reply: Result<Option<Vec<u8>>, _> = self
            .redis
            .query(redis::cmd("HGET").arg(self.value_key(key)).arg("v"))
            .await;
        Ok(self.observe(reply)?.map(Bytes::from))
    }

    async fn put(&self, key: &str, entry: Entry<'_>) -> Result<Put, StoreError> {
        let value_key = self.value_key(key);
        let ttl_ms = to_ms(entry.ttl).max(1);
        let reply: Result<i64, _> = PUT
            .key(&value_key)
            .arg(entry.bytes.as_ref())
            .arg(entry.fence)
            .arg(ttl_ms)
            .arg(encode_tags(entry.tags))
            .invoke(&self.redis)
            .await;
        if self.observe(reply)? == 0 {
            return Ok(Put::Refused);
        }
        for tag in entry.tags {
            let reply: Result<i64, _> = TAG
                .key(self.tag_key(tag))
                .arg(&value_key)
                .arg(ttl_ms)
                .invoke(&self.redis)
                .await;
            self.observe(reply)?;
        }
        Ok(Put::Stored)
    }

    async fn invalidate(&self, key: &str) -> Result<bool, StoreError> {
        let reply: Result<i64, _> = self
            .redis
            .query(redis::cmd("DEL").arg(self.value_key(key)))
            .await;
        Ok(self.observe(reply)? > 0)
    }

    async fn invalidate_tag(&self, tag: &str) -> Result<usize, StoreError> {
        let tag_key = self.tag_key(tag);
        let mut removed = 0;
        let mut cursor = 0u64;
        loop {
            let reply: Result<(u64, Vec<String>), _> = self
                .redis
                .query(
                    redis::cmd("SSCAN")
                        .arg(&tag_key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(200),
                )
                .await;
            let (next, members) = self.observe(reply)?;
            for member in members {
                // Only keys of this store's namespace, whatever the set holds.
                if !member.starts_with(self.redis.prefix()) {
                    continue;
                }
                let reply: Result<i64, _> = self.redis.query(redis::cmd("DEL").arg(&member)).await;
                removed += usize::try_from(self.observe(reply)?).unwrap_or(0);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let reply: Result<i64, _> = self.redis.query(redis::cmd("DEL").arg(&tag_key)).await;
        self.observe(reply)?;
        Ok(removed)
    }
}

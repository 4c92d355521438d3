//! The validator store in Redis: one Lua script per atomic step.
//!
//! Per resource, two keys that share the resource as hash tag (so every script runs on a
//! cluster): `{prefix}cond:{resource}`, a hash with `x` (exists), `e` (the ETag field value)
//! and `m` (Last-Modified, Unix seconds); and `{prefix}cond:{resource}:claim`, the claim token
//! with a `PX` expiry.

use std::{sync::LazyLock, time::Duration};

use turret_redis::{Error, Redis, Script};

use super::{ClaimOutcome, Health, Learned, Update};
use crate::headers::{Conditions, Current, EntityTag, EtagList};

/// Check-and-claim: RFC 9110 §13.2.2 steps 1–3 for an unsafe method, against the record.
/// Returns 0 (claimed), 1 (precondition false), 2 (another claim is active) or 3 (no record,
/// and nothing learned).
///
/// ARGV: token, claim ttl (ms), If-Match mode (`''` absent, `*`, `L` list), If-Unmodified-Since
/// (Unix seconds or `''`), If-None-Match mode, number of If-Match tags, what was learned
/// without a record (`''` nothing, `a` absent, `c` current), its ETag, its Last-Modified, the
/// record ttl (ms), then the If-Match tags (strong ones only, quoted), then the If-None-Match
/// tags (quoted opaque-tags).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "cond_claim",
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local exists = redis.call('EXISTS', KEYS[1]) == 1
local etag, lm = false, false
if exists then
  local v = redis.call('HMGET', KEYS[1], 'e', 'm')
  etag, lm = v[1], v[2]
elseif ARGV[7] == '' then
  return 3
elseif ARGV[7] == 'c' then
  redis.call('HSET', KEYS[1], 'x', '1')
  if ARGV[8] ~= '' then
    redis.call('HSET', KEYS[1], 'e', ARGV[8])
    etag = ARGV[8]
  end
  if ARGV[9] ~= '' then
    redis.call('HSET', KEYS[1], 'm', ARGV[9])
    lm = ARGV[9]
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
  exists = true
end
local im, ius, inm = ARGV[3], ARGV[4], ARGV[5]
local nim = tonumber(ARGV[6])
local first_inm = 11 + nim
if im ~= '' then
  local ok = false
  if exists then
    if im == '*' then
      ok = true
    elseif etag and string.sub(etag, 1, 2) ~= 'W/' then
      for j = 11, first_inm - 1 do
        if ARGV[j] == etag then ok = true end
      end
    end
  end
  if not ok then return 1 end
elseif ius ~= '' then
  if exists and lm and tonumber(lm) > tonumber(ius) then return 1 end
end
if inm ~= '' and exists then
  if inm == '*' then return 1 end
  if etag then
    local opaque = etag
    if string.sub(etag, 1, 2) == 'W/' then opaque = string.sub(etag, 3) end
    for j = first_inm, #ARGV do
      if ARGV[j] == opaque then return 1 end
    end
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 0
"#,
    )
});

/// Applies a finished write and releases its claim if still held.
/// ARGV: token (or `''`), mode (`set`, `del`, `keep`), etag, last-modified, record ttl (ms).
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "cond_complete",
        r#"
if ARGV[2] == 'del' then
  redis.call('DEL', KEYS[1])
elseif ARGV[2] == 'set' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'x', '1')
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[3]) end
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'm', ARGV[4]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 0
"#,
    )
});

/// Records a GET's validators unless a write holds a claim. ARGV: etag, last-modified, ttl.
static RECORD_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "cond_record_read",
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'x', '1')
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'm', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

#[derive(Debug)]
pub(crate) struct RedisStore {
    redis: Redis,
    pub(crate) health: Health,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn etag_arg(current: &Current) -> Vec<u8> {
    current
        .etag
        .as_ref()
        .map(EntityTag::to_bytes)
        .unwrap_or_default()
}

fn lm_arg(current: &Current) -> String {
    current
        .last_modified
        .map(|s| s.to_string())
        .unwrap_or_default()
}

impl RedisStore {
    pub(crate) fn new(redis: Redis) -> Self {
        Self {
            redis,
            health: Health::default(),
        }
    }

    fn keys(&self, resource: &str) -> (String, String) {
        let record = self.redis.key("cond").tag(resource).build();
        let claim = self.redis.key("cond").tag(resource).part("claim").build();
        (record, claim)
    }

    pub(crate) async fn lookup(&self, resource: &str) -> Result<Option<Current>, Error> {
        let (record, _) = self.keys(resource);
        let mut cmd = turret_redis::redis::cmd("HMGET");
        cmd.arg(&record).arg("x").arg("e").arg("m");
        let v: Vec<Option<Vec<u8>>> = self.redis.query(&cmd).await?;
        let mut v = v.into_iter();
        let (Some(x), Some(e), Some(m)) = (v.next(), v.next(), v.next()) else {
            return Ok(None);
        };
        if x.is_none() {
            return Ok(None);
        }
        Ok(Some(Current {
            etag: e.and_then(|e| EntityTag::parse(&e)),
            last_modified: m
                .and_then(|m| String::from_utf8(m).ok())
                .and_then(|m| m.parse().ok()),
        }))
    }

    pub(crate) async fn claim(
        &self,
        resource: &str,
        cond: &Conditions,
        token: String,
        learned: Option<&Learned>,
        claim_ttl: Duration,
        record_ttl: Duration,
    ) -> Result<ClaimOutcome, Error> {
        let (record, claim) = self.keys(resource);
        let mode = |l: &Option<EtagList>| match l {
            None => "",
            Some(EtagList::Any) => "*",
            Some(EtagList::Tags(_)) => "L",
        };
        let strong_im: Vec<&[u8]> = match &cond.if_match {
            Some(EtagList::Tags(tags)) => tags
                .iter()
                .filter(|t| !t.weak)
                .map(|t| t.opaque.as_slice())
                .collect(),
            _ => Vec::new(),
        };
        let mut call = CLAIM
            .key(&record)
            .key(&claim)
            .arg(&token)
            .arg(millis(claim_ttl))
            .arg(mode(&cond.if_match))
            .arg(
                cond.if_unmodified_since
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )
            .arg(mode(&cond.if_none_match))
            .arg(strong_im.len());
        call = match learned {
            None => call.arg("").arg("").arg(""),
            Some(Learned::Absent) => call.arg("a").arg("").arg(""),
            Some(Learned::Current(c)) => call.arg("c").arg(etag_arg(c)).arg(lm_arg(c)),
        }
        .arg(millis(record_ttl));
        for t in strong_im {
            call = call.arg(t);
        }
        if let Some(EtagList::Tags(tags)) = &cond.if_none_match {
            for t in tags {
                call = call.arg(t.opaque.as_slice());
            }
        }
        let code: i64 = call.invoke(&self.redis).await?;
        Ok(match code {
            0 => ClaimOutcome::Granted(token),
            2 => ClaimOutcome::Busy,
            3 => ClaimOutcome::NoRecord,
            _ => ClaimOutcome::Failed,
        })
    }

    pub(crate) async fn complete(
        &self,
        resource: &str,
        token: Option<&str>,
        update: &Update,
        record_ttl: Duration,
    ) -> Result<(), Error> {
        let (record, claim) = self.keys(resource);
        let empty = Current::default();
        let (mode, current) = match update {
            Update::Set(c) => ("set", c),
            Update::Delete => ("del", &empty),
            Update::Keep => ("keep", &empty),
        };
        let _: i64 = COMPLETE
            .key(&record)
            .key(&claim)
            .arg(token.unwrap_or(""))
            .arg(mode)
            .arg(etag_arg(current))
            .arg(lm_arg(current))
            .arg(millis(record_ttl))
            .invoke(&self.redis)
            .await?;
        Ok(())
    }

    pub(crate) async fn record_read(
        &self,
        resource: &str,
        current: &Current,
        record_ttl: Duration,
    ) -> Result<(), Error> {
        let (record, claim) = self.keys(resource);
        let _: i64 = RECORD_READ
            .key(&record)
            .key(&claim)
            .arg(etag_arg(current))
            .arg(lm_arg(current))
            .arg(millis(record_ttl))
            .invoke(&self.redis)
            .await?;
        Ok(())
    }
}

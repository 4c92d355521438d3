//! The fleet queue on a Redis Stream with one consumer group.
//!
//! Keys (one hash tag, the queue's name, so one cluster slot): the stream
//! `{prefix}wb:{name}`; the group `flushers`.
//!
//! The invariant everything rests on: **a consumer's pending list is empty or exactly one
//! batch.** A consumer reads new entries (`XREADGROUP … >`) only when its pending list is
//! empty; a batch is acknowledged and deleted in one script after the sink succeeds; a
//! takeover moves a dead consumer's whole pending list (one Lua call) to a consumer whose
//! list is empty. So a batch is the same set of entries however often it is delivered, by
//! whichever instance, and its id (first entry id and count) is stable. `XAUTOCLAIM` is not
//! used: it claims entries, not batches, and could split or join batches and so change
//! their ids.

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::Notify, time::Instant};
use turret_redis::{Error, Redis, Script, redis::Value};

use crate::{
    Batch, BatchId, Sink, WriteError,
    flush::{Backoff, Health, deliver},
    queue::{Core, MAX_BATCH_LIMIT, QueueItem, QueueKey, Settings},
};

/// The consumer group every instance of a queue joins.
const GROUP: &str = "flushers";

/// Adds an entry unless the stream already holds `ARGV[1]` entries (then returns the
/// length, an integer; otherwise the new id).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "writebehind_write",
        r"
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then return n end
return redis.call('XADD', KEYS[1], '*', 'd', ARGV[2])
",
    )
});

/// Acknowledges and deletes a batch's entries (`ARGV[2..]`), atomically: the stream holds
/// exactly the unflushed entries.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "writebehind_ack",
        r"
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
return n
",
    )
});

/// Takes over the whole pending list of one other consumer whose every entry has been idle
/// at least `ARGV[3]` ms, and removes other consumers with nothing pending that have been
/// idle that long. Returns `{consumer, entries}` or `{}`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "writebehind_claim",
        r"
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return {} end
local min_idle = tonumber(ARGV[3])
for _, c in ipairs(consumers) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if name and name ~= ARGV[2] then
    if pending == 0 then
      if idle >= min_idle then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name) end
    else
      local stale = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', min_idle, '-', '+', pending, name)
      if #stale == pending then
        local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], min_idle}
        for _, e in ipairs(stale) do args[#args + 1] = e[1] end
        local claimed = redis.call(unpack(args))
        if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, name) == 0 then
          redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
        end
        return {name, claimed}
      end
    end
  end
end
return {}
",
    )
});

/// Resets the idle time of a batch (`ARGV[3..]`) if it is still this consumer's
/// (`ARGV[2]`): a live consumer keeps a slow or failing batch from being taken over.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "writebehind_touch",
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] == nil or p[1][2] ~= ARGV[2] then return 0 end
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
args[#args + 1] = 'JUSTID'
redis.call(unpack(args))
return 1
",
    )
});

/// The backlog (stream length) and the oldest entry's id.
static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "writebehind_stats",
        r"
local n = redis.call('XLEN', KEYS[1])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if first[1] then return {n, first[1][1]} end
return {n}
",
    )
});

/// One stream entry as read: its id and the payload field, if any.
#[derive(Debug)]
struct Raw {
    id: String,
    payload: Option<Vec<u8>>,
}

pub(crate) struct Queue {
    redis: Redis,
    stream: String,
    consumer: String,
    /// Writes through this handle since the flusher last read: wakes it at `max_batch`.
    written: AtomicUsize,
    undecodable_logged: AtomicBool,
}

impl Queue {
    pub(crate) fn new<V>(redis: Redis, settings: &Settings<V>) -> Self {
        let stream = redis.key("wb").tag(&settings.name).build();
        let consumer = settings
            .consumer
            .clone()
            .unwrap_or_else(|| format!("{}-{:016x}", std::process::id(), rand::random::<u64>()));
        Self {
            redis,
            stream,
            consumer,
            written: AtomicUsize::new(0),
            undecodable_logged: AtomicBool::new(false),
        }
    }

    pub(crate) async fn push<K: QueueKey, V: QueueItem>(
        &self,
        settings: &Settings<V>,
        wake: &Notify,
        key: &K,
        item: &V,
    ) -> Result<(), WriteError> {
        let payload =
            postcard::to_allocvec(&(key, item)).map_err(|e| WriteError::Encode(e.to_string()))?;
        let reply: Value = WRITE
            .key(&self.stream)
            .arg(settings.max_backlog)
            .arg(payload)
            .invoke(&self.redis)
            .await
            .map_err(WriteError::Redis)?;
        if let Value::Int(_) = reply {
            return Err(WriteError::Full {
                max_backlog: settings.max_backlog,
            });
        }
        if self.written.fetch_add(1, Ordering::Relaxed) + 1 == settings.max_batch {
            wake.notify_one();
        }
        Ok(())
    }

    /// `XREADGROUP` from `id` (`0`: this consumer's pending list; `>`: new entries).
    async fn read(&self, id: &str, count: usize) -> Result<Vec<Raw>, Error> {
        let mut cmd = turret_redis::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(id);
        let reply: Value = self.redis.query(&cmd).await?;
        Ok(streams_reply(&reply))
    }

    async fn claim(
        &self,
        settings_claim_idle: Duration,
    ) -> Result<(Option<String>, Vec<Raw>), Error> {
        let reply: Value = CLAIM
            .key(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(settings_claim_idle.as_millis() as u64)
            .invoke(&self.redis)
            .await?;
        let Value::Array(parts) = reply else {
            return Ok((None, Vec::new()));
        };
        match parts.as_slice() {
            [from, entries] => Ok((text(from), entries_of(entries))),
            _ => Ok((None, Vec::new())),
        }
    }

    async fn ack(&self, ids: &[String]) -> Result<(), Error> {
        let mut call = ACK.key(&self.stream).arg(GROUP);
        for id in ids {
            call = call.arg(id);
        }
        call.invoke::<Value>(&self.redis).await.map(|_| ())
    }

    async fn touch(&self, ids: &[String]) {
        let mut call = TOUCH.key(&self.stream).arg(GROUP).arg(&self.consumer);
        for id in ids {
            call = call.arg(id);
        }
        if let Err(e) = call.invoke::<Value>(&self.redis).await {
            tracing::debug!(stream = %self.stream, error = %e, "write-behind: touching the batch in flight failed");
        }
    }

    async fn create_group(&self) -> Result<(), Error> {
        let mut cmd = turret_redis::redis::cmd("XGROUP");
        // From the start of the stream: it holds only unflushed entries.
        cmd.arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.redis.query::<Value>(&cmd).await {
            Err(Error::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn report(&self, name: &str) {
        let Ok(Value::Array(parts)) = STATS.key(&self.stream).invoke::<Value>(&self.redis).await
        else {
            return;
        };
        let backlog = match parts.first() {
            Some(Value::Int(n)) => *n as f64,
            _ => return,
        };
        let age = parts
            .get(1)
            .and_then(text)
            .and_then(|id| id.split('-').next()?.parse::<u64>().ok())
            .map_or(0.0, |ms| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                now.saturating_sub(ms) as f64 / 1000.0
            });
        metrics::gauge!("turret_writebehind_backlog", "queue" => name.to_owned()).set(backlog);
        metrics::gauge!("turret_writebehind_oldest_pending_seconds", "queue" => name.to_owned())
            .set(age);
    }

    /// Decodes a batch's entries; the undecodable ones are counted, logged once, and
    /// acknowledged with the batch (they can never become valid).
    fn decode<K: QueueKey, V: QueueItem>(&self, name: &str, entries: &[Raw]) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let decoded = match &entry.payload {
                Some(bytes) => postcard::from_bytes::<(K, V)>(bytes).map_err(|e| e.to_string()),
                None => Err("no `d` field".to_owned()),
            };
            match decoded {
                Ok(kv) => out.push(kv),
                Err(reason) => {
                    metrics::counter!("turret_writebehind_undecodable_total", "queue" => name.to_owned())
                        .increment(1);
                    if !self.undecodable_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(stream = %self.stream, id = %entry.id, %reason, "write-behind: an entry does not decode; it is skipped and acknowledged with its batch (counted in turret_writebehind_undecodable_total, logged once)");
                    }
                }
            }
        }
        out
    }

    pub(crate) async fn run<K: QueueKey, V: QueueItem, S: Sink<K, V>>(
        &self,
        core: &Core<K, V>,
        sink: &S,
    ) {
        let s = &core.settings;
        let mut health = Health::new(&s.name);
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            s.flush_interval.max(Duration::from_secs(1)),
        );
        // At start: this consumer's own pending batch first (a stable name, restarted).
        let mut check_own = true;
        let mut last_claim: Option<Instant> = None;
        let past_deadline = || core.give_up_at().is_some_and(|at| Instant::now() >= at);
        loop {
            let closed = core.is_closed();
            if closed && past_deadline() {
                return;
            }
            let next = self
                .next_batch(s, closed, &mut check_own, &mut last_claim)
                .await;
            let entries = match next {
                Ok(entries) => {
                    health.queue_ok();
                    backoff.reset();
                    entries
                }
                Err(e) => {
                    check_own = true;
                    if let Error::Redis(r) = &e
                        && r.code() == Some("NOGROUP")
                    {
                        match self.create_group().await {
                            Ok(()) => continue,
                            Err(e) => health.queue_failed(&e),
                        }
                    } else {
                        health.queue_failed(&e);
                    }
                    if closed {
                        // What is left stays in the stream for the other instances.
                        return;
                    }
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            if entries.is_empty() {
                self.report(&s.name).await;
                if closed {
                    return;
                }
                core.idle(s.flush_interval).await;
                continue;
            }
            let full = entries.len() >= s.max_batch;
            if !self.flush(core, sink, &mut health, entries).await {
                // Shut down while the sink was failing: the batch stays pending.
                return;
            }
            if !full && !closed {
                self.report(&s.name).await;
                core.idle(s.flush_interval).await;
            }
        }
    }

    async fn next_batch<V>(
        &self,
        s: &Settings<V>,
        closed: bool,
        check_own: &mut bool,
        last_claim: &mut Option<Instant>,
    ) -> Result<Vec<Raw>, Error> {
        if *check_own {
            // The whole pending list: one batch (see the module docs).
            let own = self.read("0", MAX_BATCH_LIMIT).await?;
            *check_own = false;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        if !closed && last_claim.is_none_or(|at| at.elapsed() >= s.claim_idle / 2) {
            *last_claim = Some(Instant::now());
            let (from, claimed) = self.claim(s.claim_idle).await?;
            if !claimed.is_empty() {
                metrics::counter!("turret_writebehind_claimed_total", "queue" => s.name.clone())
                    .increment(claimed.len() as u64);
                tracing::info!(queue = %s.name, from = from.as_deref().unwrap_or("?"), entries = claimed.len(), "write-behind: took over a batch another consumer left pending");
                return Ok(claimed);
            }
        }
        self.written.store(0, Ordering::Relaxed);
        self.read(">", s.max_batch).await
    }

    /// Delivers one batch and acknowledges it. False: shut down before it was delivered.
    async fn flush<K: QueueKey, V: QueueItem, S: Sink<K, V>>(
        &self,
        core: &Core<K, V>,
        sink: &S,
        health: &mut Health,
        entries: Vec<Raw>,
    ) -> bool {
        let s = &core.settings;
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let writes = self.decode::<K, V>(&s.name, &entries);
        let batch = Batch::new(
            BatchId::new(&s.name, &ids[0], ids.len()),
            s.merge.apply(writes),
            ids.len(),
        );
        if !batch.is_empty() {
            let touch_every = s.claim_idle / 3;
            let delivered = deliver(
                sink,
                &batch,
                s,
                health,
                || core.give_up_at(),
                touch_every,
                || self.touch(&ids),
            )
            .await;
            if !delivered {
                return false;
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match self.ack(&ids).await {
                Ok(()) => {
                    health.queue_ok();
                    return true;
                }
                Err(e) => {
                    health.queue_failed(&e);
                    if core.give_up_at().is_some_and(|at| Instant::now() >= at) {
                        // Delivered, not acknowledged: redelivered with the same id later.
                        return false;
                    }
                    tokio::time::sleep(backoff.next()).await;
                    // Keep it ours meanwhile.
                    self.touch(&ids).await;
                }
            }
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `XREADGROUP`'s reply, one stream: RESP2 `[[key, entries]]`, RESP3 `{key: entries}`, or nil.
fn streams_reply(v: &Value) -> Vec<Raw> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => Some(entries_of(&kv[1])),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries_of(e)).collect(),
        _ => Vec::new(),
    }
}

/// `[[id, [field, value, …] | nil], …]`: an entry whose fields are missing or malformed
/// keeps its id (so it can be acknowledged) with no payload.
fn entries_of(v: &Value) -> Vec<Raw> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else {
                return None;
            };
            let id = text(parts.first()?)?;
            let payload = match parts.get(1) {
                Some(Value::Array(fields)) => fields
                    .chunks_exact(2)
                    .find(|f| text(&f[0]).as_deref() == Some("d"))
                    .and_then(|f| match &f[1] {
                        Value::BulkString(b) => Some(b.clone()),
                        _ => None,
                    }),
                Some(Value::Map(fields)) => fields
                    .iter()
                    .find(|(k, _)| text(k).as_deref() == Some("d"))
                    .and_then(|(_, v)| match v {
                        Value::BulkString(b) => Some(b.clone()),
                        _ => None,
                    }),
                _ => None,
            };
            Some(Raw { id, payload })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_replies_parse_in_both_protocols_and_keep_ids_of_malformed_entries() {
        let entries = Value::Array(vec![
            Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("d"), bulk("x")])]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
            Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![bulk("other"), bulk("y")]),
            ]),
            Value::Int(7),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("stream"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("stream"), entries)]);
        for reply in [resp2, resp3] {
            let raw = streams_reply(&reply);
            let ids: Vec<&str> = raw.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["1-0", "2-0", "3-0"]);
            assert_eq!(raw[0].payload.as_deref(), Some(&b"x"[..]));
            assert!(raw[1].payload.is_none() && raw[2].payload.is_none());
        }
        assert!(streams_reply(&Value::Nil).is_empty());
    }
}

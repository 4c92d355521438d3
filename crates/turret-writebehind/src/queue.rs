//! The handle users hold, its builder, and what the handle and the flusher task share.

use std::{
    fmt,
    hash::Hash,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Notify, watch};

use crate::{ConfigError, Merge, Sink, WriteError, memory};

/// What a queue's key must be: merged in a map, encoded into the queue.
pub trait QueueKey:
    Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + 'static
{
}
impl<T: Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + 'static> QueueKey for T {}

/// What a queue's item must be: encoded into the queue, handed to the sink.
pub trait QueueItem: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> QueueItem for T {}

/// Default time between flushes.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default largest batch, in writes.
pub const DEFAULT_MAX_BATCH: usize = 500;
/// Default bound on unflushed writes.
pub const DEFAULT_MAX_BACKLOG: u64 = 100_000;
/// Default idle time after which another instance takes over pending entries (Redis).
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);
/// The largest `max_batch` accepted: a batch is claimed as a whole by one Lua call.
pub const MAX_BATCH_LIMIT: usize = 4096;

/// The settings every part of a queue reads.
pub(crate) struct Settings<V> {
    pub(crate) name: String,
    pub(crate) flush_interval: Duration,
    pub(crate) max_batch: usize,
    pub(crate) max_backlog: u64,
    pub(crate) claim_idle: Duration,
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) merge: Merge<V>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) consumer: Option<String>,
}

impl<V> fmt::Debug for Settings<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("flush_interval", &self.flush_interval)
            .field("max_batch", &self.max_batch)
            .field("max_backlog", &self.max_backlog)
            .field("claim_idle", &self.claim_idle)
            .field("merge", &self.merge)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// Where the queue lives.
pub(crate) enum Backend<K, V> {
    Memory(memory::Queue<K, V>),
    #[cfg(feature = "redis")]
    Redis(crate::redis::Queue),
}

/// Shared by every handle and the flusher task.
pub(crate) struct Core<K, V> {
    pub(crate) settings: Settings<V>,
    pub(crate) backend: Backend<K, V>,
    closed: AtomicBool,
    closed_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    pub(crate) wake: Notify,
    done: watch::Sender<bool>,
}

impl<K, V> Core<K, V> {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Ok(mut at) = self.closed_at.lock() {
                *at = Some(tokio::time::Instant::now());
            }
            self.wake.notify_one();
        }
    }

    /// Once closed: when retries stop (closed + `shutdown_timeout`).
    pub(crate) fn give_up_at(&self) -> Option<tokio::time::Instant> {
        let at = self.closed_at.lock().ok().and_then(|at| *at)?;
        Some(at + self.settings.shutdown_timeout)
    }

    /// Sleeps until the next flush is due, a full batch is waiting, or the queue closes.
    pub(crate) async fn idle(&self, wait: Duration) {
        if self.is_closed() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.wake.notified() => {}
        }
    }

    /// Announces that the flusher has finished. `send_replace`, not `send`: `send` drops the
    /// value when nobody is subscribed yet, and a `shutdown` subscribing later would wait
    /// forever.
    fn finished(&self) {
        self.done.send_replace(true);
    }
}

/// Closes the queue when the last handle goes.
struct Handle<K, V> {
    core: Arc<Core<K, V>>,
}

impl<K, V> Drop for Handle<K, V> {
    fn drop(&mut self) {
        self.core.close();
    }
}

/// A write-behind queue: [`write`](Self::write) returns once the item is in the queue, a
/// background task hands merged batches to the [`Sink`]. Cheap to clone; every clone feeds
/// the same queue. See the [crate docs](crate) for the guarantees of each mode.
pub struct WriteBehind<K, V> {
    handle: Arc<Handle<K, V>>,
}

impl<K, V> Clone for WriteBehind<K, V> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<K, V> fmt::Debug for WriteBehind<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.handle.core;
        f.debug_struct("WriteBehind")
            .field("name", &core.settings.name)
            .field(
                "backend",
                &match core.backend {
                    Backend::Memory(_) => "memory",
                    #[cfg(feature = "redis")]
                    Backend::Redis(_) => "redis",
                },
            )
            .field("closed", &core.is_closed())
            .finish()
    }
}

impl<K: QueueKey, V: QueueItem> WriteBehind<K, V> {
    /// Starts configuring a queue named `name` (trusted configuration: it names the Redis
    /// stream, the metrics' `queue` label and the batch ids).
    pub fn builder(name: impl Into<String>) -> WriteBehindBuilder<K, V> {
        WriteBehindBuilder {
            settings: Settings {
                name: name.into(),
                flush_interval: DEFAULT_FLUSH_INTERVAL,
                max_batch: DEFAULT_MAX_BATCH,
                max_backlog: DEFAULT_MAX_BACKLOG,
                claim_idle: DEFAULT_CLAIM_IDLE,
                retry_min: Duration::from_millis(100),
                retry_max: Duration::from_secs(10),
                shutdown_timeout: Duration::from_secs(10),
                merge: Merge::LastWins,
                consumer: None,
            },
            key: PhantomData,
        }
    }

    /// Adds one item for `key`. Returns once the item is in the queue: on Redis, when
    /// `XADD` is acknowledged (durable as Redis is); in memory, when it is in the bounded
    /// queue (lost if the process dies before the flush). Beyond `max_backlog` unflushed
    /// writes it returns [`WriteError::Full`] and adds nothing.
    pub async fn write(&self, key: K, item: V) -> Result<(), WriteError> {
        let core = &self.handle.core;
        if core.is_closed() {
            return Err(WriteError::Closed);
        }
        let out = match &core.backend {
            Backend::Memory(q) => q.push(&core.settings, &core.wake, key, item),
            #[cfg(feature = "redis")]
            Backend::Redis(q) => q.push(&core.settings, &core.wake, &key, &item).await,
        };
        let name = core.settings.name.clone();
        match &out {
            Ok(()) => {
                metrics::counter!("turret_writebehind_writes_total", "queue" => name).increment(1)
            }
            Err(e) => {
                let reason = match e {
                    WriteError::Full { .. } => "full",
                    WriteError::Closed => "closed",
                    WriteError::Encode(_) => "encode",
                    #[cfg(feature = "redis")]
                    WriteError::Redis(_) => "redis",
                };
                metrics::counter!("turret_writebehind_rejected_total", "queue" => name, "reason" => reason)
                    .increment(1);
            }
        }
        out
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.handle.core.settings.name
    }

    /// Stops accepting writes (for every clone: later writes get [`WriteError::Closed`]),
    /// flushes what is left, and returns when the flusher task has finished.
    ///
    /// Memory: every queued item is flushed, unless the sink keeps failing for
    /// `shutdown_timeout` (the count of items lost is logged). Redis: the batch in flight is
    /// finished and new entries are flushed until the stream has none for this instance or
    /// `shutdown_timeout` passes; what is left stays durable in the stream for the other
    /// instances (or this one's next start).
    ///
    /// Dropping every handle without calling this does the same in the background, as long
    /// as the Tokio runtime runs; a runtime shutting down cancels it (memory: unflushed items
    /// are lost; Redis: they stay in the stream).
    pub async fn shutdown(&self) {
        let core = &self.handle.core;
        let mut done = core.done.subscribe();
        core.close();
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Configures and starts a [`WriteBehind`] queue.
pub struct WriteBehindBuilder<K, V> {
    settings: Settings<V>,
    key: PhantomData<fn() -> K>,
}

impl<K, V> fmt::Debug for WriteBehindBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindBuilder")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<K: QueueKey, V: QueueItem> WriteBehindBuilder<K, V> {
    /// How often a batch is flushed (default 1 s). A batch also goes as soon as `max_batch`
    /// writes wait, and a backlog drains batch after batch without waiting.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.settings.flush_interval = every;
        self
    }

    /// The most writes in one batch (default 500, at most [`MAX_BATCH_LIMIT`]).
    pub fn max_batch(mut self, writes: usize) -> Self {
        self.settings.max_batch = writes;
        self
    }

    /// The most unflushed writes the queue holds (default 100,000); beyond it `write` fails
    /// with [`WriteError::Full`]. On Redis: the stream's length, which never exceeds it.
    pub fn max_backlog(mut self, writes: u64) -> Self {
        self.settings.max_backlog = writes;
        self
    }

    /// How the writes of one key in a batch are merged (default [`Merge::LastWins`]).
    pub fn merge(mut self, merge: Merge<V>) -> Self {
        self.settings.merge = merge;
        self
    }

    /// Redis: how long a batch may stay pending with its consumer, untouched, before another
    /// instance takes it over (default 30 s). A live consumer touches its batch while the
    /// sink runs or retries, so only a dead (or cut-off) one loses it. Must be more than
    /// twice `flush_interval`.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.settings.claim_idle = idle;
        self
    }

    /// The backoff between sink retries: from `min`, doubling, up to `max` (default 100 ms
    /// to 10 s).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.retry_min = min;
        self.settings.retry_max = max;
        self
    }

    /// How long [`WriteBehind::shutdown`] keeps retrying a failing sink (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// Redis: this instance's consumer name in the group (default: random per start). A name
    /// stable across restarts (one per instance, never two live processes with one name)
    /// lets a restarted instance flush the batch it left pending at once instead of another
    /// instance waiting `claim_idle`.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.settings.consumer = Some(name.into());
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        let bad = |m: String| Err(ConfigError(m));
        if s.name.is_empty() {
            return bad("the queue name is empty".into());
        }
        if s.flush_interval.is_zero() {
            return bad("flush_interval must be more than zero".into());
        }
        if s.max_batch == 0 || s.max_batch > MAX_BATCH_LIMIT {
            return bad(format!(
                "max_batch must be from 1 to {MAX_BATCH_LIMIT}, not {}",
                s.max_batch
            ));
        }
        if s.max_backlog < s.max_batch as u64 {
            return bad(format!(
                "max_backlog ({}) must be at least max_batch ({})",
                s.max_backlog, s.max_batch
            ));
        }
        if s.claim_idle < s.flush_interval * 2 {
            return bad(format!(
                "claim_idle ({:?}) must be at least twice flush_interval ({:?})",
                s.claim_idle, s.flush_interval
            ));
        }
        if s.retry_min.is_zero() || s.retry_max < s.retry_min {
            return bad("retry_backoff needs 0 < min <= max".into());
        }
        if s.consumer.as_deref() == Some("") {
            return bad("the consumer name is empty".into());
        }
        Ok(())
    }

    /// Starts a queue in this process' memory, flushing to `sink`. Single instance only:
    /// **a crash loses the writes not flushed yet** (the classic write-behind warning: fast
    /// writes, less database load, data loss if the process fails before the flush). A
    /// graceful [`WriteBehind::shutdown`] flushes them. Must be called inside a Tokio
    /// runtime.
    pub fn memory<S: Sink<K, V>>(self, sink: S) -> Result<WriteBehind<K, V>, ConfigError> {
        self.validate()?;
        Ok(start(
            self.settings,
            Backend::Memory(memory::Queue::new()),
            sink,
        ))
    }

    /// Starts a queue on a Redis Stream shared by every instance that starts it with the
    /// same name on the same Redis (one node or a cluster: every key of the queue shares one
    /// hash tag). Needs no I/O to start (the consumer group is made on first use). Must be
    /// called inside a Tokio runtime.
    #[cfg(feature = "redis")]
    pub fn redis<S: Sink<K, V>>(
        self,
        redis: turret_redis::Redis,
        sink: S,
    ) -> Result<WriteBehind<K, V>, ConfigError> {
        self.validate()?;
        let queue = crate::redis::Queue::new(redis, &self.settings);
        Ok(start(self.settings, Backend::Redis(queue), sink))
    }
}

fn start<K: QueueKey, V: QueueItem, S: Sink<K, V>>(
    settings: Settings<V>,
    backend: Backend<K, V>,
    sink: S,
) -> WriteBehind<K, V> {
    let (done, _) = watch::channel(false);
    let core = Arc::new(Core {
        settings,
        backend,
        closed: AtomicBool::new(false),
        closed_at: std::sync::Mutex::new(None),
        wake: Notify::new(),
        done,
    });
    let task_core = core.clone();
    tokio::spawn(async move {
        match &task_core.backend {
            Backend::Memory(q) => q.run(&task_core, &sink).await,
            #[cfg(feature = "redis")]
            Backend::Redis(q) => q.run(&task_core, &sink).await,
        }
        task_core.finished();
    });
    WriteBehind {
        handle: Arc::new(Handle { core }),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::Batch;

    struct Discard;

    impl Sink<u64, u64> for Discard {
        type Error = Infallible;
        async fn flush(&self, _: &Batch<u64, u64>) -> Result<(), Infallible> {
            Ok(())
        }
    }

    /// The flusher may finish before `shutdown` starts waiting for it (closed by another
    /// clone's `shutdown`, or by a worker thread racing the caller's): `shutdown` must still
    /// return. A finish announced to no receiver used to be lost, and `shutdown` waited
    /// forever.
    #[tokio::test]
    async fn shutdown_returns_when_the_flusher_already_finished() {
        let q = WriteBehind::<u64, u64>::builder("done")
            .memory(Discard)
            .unwrap();
        let core = q.handle.core.clone();
        core.close();
        // The flusher task holds the other reference until it has finished.
        tokio::time::timeout(Duration::from_secs(10), async {
            while Arc::strong_count(&core) > 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the flusher finishes once the queue is closed");
        tokio::time::timeout(Duration::from_secs(10), q.shutdown())
            .await
            .expect("shutdown returns");
    }
}

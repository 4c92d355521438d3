//! Write-behind: writes return as soon as they are in a queue, and a background task hands
//! them, merged per key, in batches to your [`Sink`] (usually one database transaction per
//! batch). A queue, not a cache: it knows no layer.
//!
//! - [`WriteBehind::write`] returns once the item is **in the queue**: on Redis, once `XADD`
//!   is acknowledged; in memory, once it is in the bounded queue.
//! - Batches go every `flush_interval`, or as soon as `max_batch` writes wait; a backlog
//!   drains batch after batch. The writes of one key in a batch are merged by a [`Merge`]
//!   rule: the last wins, or a fold (summing view counts), or none.
//! - Each [`Batch`] has a stable [`BatchId`]: delivery is at least once, and a sink that
//!   records the id in the same transaction as its effect applies each batch exactly once.
//! - A failing sink is retried with backoff; the batch stays in the queue, nothing is lost.
//! - Bounded: beyond `max_backlog` unflushed writes, `write` fails with
//!   [`WriteError::Full`] (backpressure) and adds nothing.
//!
//! # Two modes
//!
//! **Memory** ([`WriteBehindBuilder::memory`]): one process, a bounded in-process queue.
//! Fast writes and less database load — and **the writes not flushed yet are lost if the
//! process crashes** (the classic write-behind warning). [`WriteBehind::shutdown`] (or
//! dropping every handle while the runtime runs) flushes them.
//!
//! **Redis** ([`WriteBehindBuilder::redis`], feature `redis`, default): a Redis Stream
//! shared by a fleet through one consumer group, so each entry is flushed by exactly one
//! instance. A batch is acknowledged (and deleted from the stream) only after the sink
//! succeeds; a batch left pending by a dead instance is taken over by another after
//! `claim_idle` (or by the same instance at once after a restart, given a stable
//! [`consumer`](WriteBehindBuilder::consumer) name). The stream holds exactly the unflushed
//! writes, so its length is the backlog and never exceeds `max_backlog`. Every key of a
//! queue shares one hash tag, so it works on Redis Cluster. The writes are as durable as
//! Redis is: with persistence off, or an unreplicated write lost on a failover, they go
//! with it (use AOF, `appendfsync everysec` or `always`, for a queue that must survive a
//! Redis restart).
//!
//! Entries are `postcard`-encoded `(key, item)` pairs. An entry read from Redis that does
//! not decode (written by another program or an incompatible version) is counted in
//! `turret_writebehind_undecodable_total`, logged once, left out of its batch and
//! acknowledged and deleted with it: it can never become valid, and it never blocks the
//! queue.
//!
//! # Metrics and logs
//!
//! Labelled `queue`: `turret_writebehind_backlog` and
//! `turret_writebehind_oldest_pending_seconds` (gauges), `turret_writebehind_batch_size`
//! (writes per batch) and `turret_writebehind_flush_seconds` (histograms),
//! `turret_writebehind_sink_failures_total`, `turret_writebehind_writes_total`,
//! `turret_writebehind_rejected_total{reason}`, `turret_writebehind_flushed_total`,
//! `turret_writebehind_claimed_total`, `turret_writebehind_undecodable_total`. One log line
//! per change of state: the sink failing / recovered, Redis unreachable / back.
//!
//! # Example
//!
//! View counts summed per product and flushed once per batch (memory mode):
//!
//! ```
//! use std::{collections::HashMap, sync::{Arc, Mutex}, time::Duration};
//! use turret_writebehind::{Batch, Merge, Sink, WriteBehind};
//!
//! /// Stands in for a database: applies each batch once, recording its id.
//! #[derive(Clone, Default)]
//! struct Views(Arc<Mutex<(HashMap<u64, i64>, Vec<String>)>>);
//!
//! impl Sink<u64, i64> for Views {
//!     type Error = std::convert::Infallible;
//!     async fn flush(&self, batch: &Batch<u64, i64>) -> Result<(), Self::Error> {
//!         let mut db = self.0.lock().unwrap();
//!         if db.1.iter().any(|id| id == batch.id().as_str()) {
//!             return Ok(()); // applied before: a redelivery
//!         }
//!         db.1.push(batch.id().to_string());
//!         for (product, n) in batch.items() {
//!             *db.0.entry(*product).or_default() += n;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Views::default();
//! let views = WriteBehind::<u64, i64>::builder("views")
//!     .flush_interval(Duration::from_millis(100))
//!     .merge(Merge::fold(|a, b| a + b))
//!     .memory(db.clone())?;
//! for product in [7, 7, 8, 7] {
//!     views.write(product, 1).await?; // returns at once
//! }
//! views.shutdown().await; // flushes what is queued
//! assert_eq!(db.0.lock().unwrap().0, HashMap::from([(7, 3), (8, 1)]));
//! # Ok(()) }
//! ```

mod batch;
mod error;
mod flush;
mod memory;
mod queue;
#[cfg(feature = "redis")]
mod redis;
mod sink;

pub use batch::{Batch, BatchId, Merge};
pub use error::{ConfigError, WriteError};
pub use queue::{
    DEFAULT_CLAIM_IDLE, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_BACKLOG, DEFAULT_MAX_BATCH,
    MAX_BATCH_LIMIT, QueueItem, QueueKey, WriteBehind, WriteBehindBuilder,
};
pub use sink::Sink;

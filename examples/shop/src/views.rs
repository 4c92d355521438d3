//! Product views counted through write-behind (`turret_writebehind`).
//!
//! `POST /products/{id}/views` adds one view to a queue and answers `204` as soon as the view
//! is in it; every `--write-behind-flush` a batch (views summed per product) goes to the
//! database in one transaction that also records the batch's id, so a batch delivered twice
//! is applied once.
//!
//! - With `--redis-url` the queue is a Redis Stream shared by every shop on that Redis: each
//!   view is flushed by exactly one of them; a batch left pending by a shop that died is
//!   taken over by another after `--write-behind-claim-idle`, or by the same shop at once when
//!   it restarts with the same `--write-behind-consumer`. A `204` means the view is in Redis.
//! - Without Redis the queue is in this process: a crash loses the views not flushed yet (a
//!   graceful shutdown flushes them).

use std::time::Duration;

use turret_redis::Redis;
use turret_writebehind::{Batch, Merge, Sink, WriteBehind, WriteError};

use crate::{db::Db, errors::ApiError};

/// The queue's name: the Redis stream's name and the `queue` label of the metrics.
const QUEUE: &str = "product-views";

/// The view counter; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Views {
    queue: WriteBehind<i64, i64>,
    db: Db,
}

/// How the queue is set up (from the flags).
#[derive(Debug, Clone)]
pub(crate) struct ViewsConfig {
    /// How often a batch goes to the database.
    pub(crate) flush: Duration,
    /// Redis: how long a dead shop's batch waits before another takes it over.
    pub(crate) claim_idle: Duration,
    /// Redis: this shop's consumer name (random per start when absent).
    pub(crate) consumer: Option<String>,
}

/// Where batches go: the database, one transaction per batch.
struct DbSink(Db);

impl Sink<i64, i64> for DbSink {
    type Error = sqlx::Error;

    async fn flush(&self, batch: &Batch<i64, i64>) -> Result<(), sqlx::Error> {
        let applied = self
            .0
            .apply_views(batch.id().as_str(), batch.items())
            .await?;
        if !applied {
            tracing::info!(batch = %batch.id(), "view batch delivered again: applied before, skipped");
        }
        Ok(())
    }
}

impl Views {
    /// Starts the queue: on `redis` (shared by the fleet) or in this process.
    pub(crate) fn start(
        db: Db,
        redis: Option<Redis>,
        config: &ViewsConfig,
    ) -> Result<Self, String> {
        let mut builder = WriteBehind::builder(QUEUE)
            .flush_interval(config.flush)
            .claim_idle(config.claim_idle)
            .merge(Merge::fold(|a: i64, b: i64| a.saturating_add(b)));
        if let Some(consumer) = &config.consumer {
            builder = builder.consumer(consumer.clone());
        }
        let sink = DbSink(db.clone());
        let queue = match redis {
            Some(redis) => builder.redis(redis, sink),
            None => builder.memory(sink),
        }
        .map_err(|e| format!("write-behind: {e}"))?;
        Ok(Self { queue, db })
    }

    /// Counts one view of `product`; returns once it is in the queue.
    ///
    /// While Redis is known to be unreachable (its circuit breaker is open, so the write was
    /// certainly not sent) the view goes straight to the database. Any other failure — a
    /// timeout, whose write may or may not have reached Redis, or a full queue — is a `503`
    /// and counts nothing here, so that no view is counted twice.
    pub(crate) async fn add(&self, product: i64) -> Result<(), ApiError> {
        match self.queue.write(product, 1).await {
            Ok(()) => Ok(()),
            Err(WriteError::Redis(turret_redis::Error::Unavailable)) => {
                Ok(self.db.add_views_now(product, 1).await?)
            }
            Err(WriteError::Full { .. }) => Err(ApiError::Unavailable(
                "too many views are waiting for the database: retry later".into(),
            )),
            Err(WriteError::Closed) => {
                Err(ApiError::Unavailable("the shop is shutting down".into()))
            }
            Err(other) => Err(ApiError::Unavailable(format!(
                "the view was not counted: {other}"
            ))),
        }
    }

    /// Stops taking views and flushes what is queued (Redis: what stays is flushed by
    /// another shop or this one's next start).
    pub(crate) async fn shutdown(&self) {
        self.queue.shutdown().await;
    }
}

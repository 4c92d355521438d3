//! Delivering a batch: retries with backoff, the state-change log lines, the metrics.

use std::{fmt::Display, future::Future, time::Duration};

use tokio::time::Instant;

use crate::{Batch, Sink, queue::Settings};

/// Sink and queue health, logged once per change of state.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Health {
    queue: String,
    sink_failing: bool,
    queue_failing: bool,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Health {
    pub(crate) fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            sink_failing: false,
            queue_failing: false,
        }
    }

    fn sink_failed(&mut self, error: &dyn Display, batch: &str, attempt: u32) {
        metrics::counter!("turret_writebehind_sink_failures_total", "queue" => self.queue.clone())
            .increment(1);
        if !self.sink_failing {
            self.sink_failing = true;
            tracing::warn!(queue = %self.queue, %batch, %error, "write-behind sink failing: batches are retried with backoff, nothing is dropped");
        } else {
            tracing::debug!(queue = %self.queue, %batch, %error, attempt, "write-behind sink still failing");
        }
    }

    fn sink_ok(&mut self) {
        if self.sink_failing {
            self.sink_failing = false;
            tracing::info!(queue = %self.queue, "write-behind sink recovered");
        }
    }

    /// The queue's store (Redis) failed.
    pub(crate) fn queue_failed(&mut self, error: &dyn Display) {
        if !self.queue_failing {
            self.queue_failing = true;
            tracing::warn!(queue = %self.queue, %error, "write-behind queue unreachable (Redis): flushing paused, retrying");
        } else {
            tracing::debug!(queue = %self.queue, %error, "write-behind queue still unreachable");
        }
    }

    /// The queue's store answered.
    pub(crate) fn queue_ok(&mut self) {
        if self.queue_failing {
            self.queue_failing = false;
            tracing::info!(queue = %self.queue, "write-behind queue reachable again: flushing resumed");
        }
    }
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Delivers `batch` until the sink accepts it (true), or, once the queue is closed, until
/// `give_up_at` passes (false). `touch` runs every `touch_every` while a flush or a
/// backoff is in progress (Redis: keeps the entries ours, see `redis.rs`).
pub(crate) async fn deliver<K, V, S, T, TF>(
    sink: &S,
    batch: &Batch<K, V>,
    settings: &Settings<V>,
    health: &mut Health,
    give_up_at: impl Fn() -> Option<Instant>,
    touch_every: Duration,
    mut touch: T,
) -> bool
where
    S: Sink<K, V>,
    T: FnMut() -> TF,
    TF: Future<Output = ()>,
{
    let queue = settings.name.clone();
    let mut backoff = Backoff::new(settings.retry_min, settings.retry_max);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result = {
            let flush = sink.flush(batch);
            tokio::pin!(flush);
            let mut ticker = tokio::time::interval_at(started + touch_every, touch_every);
            loop {
                tokio::select! {
                    r = &mut flush => break r,
                    _ = ticker.tick() => touch().await,
                }
            }
        };
        metrics::histogram!("turret_writebehind_flush_seconds", "queue" => queue.clone())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                health.sink_ok();
                metrics::histogram!("turret_writebehind_batch_size", "queue" => queue.clone())
                    .record(batch.entries() as f64);
                metrics::counter!("turret_writebehind_flushed_total", "queue" => queue.clone())
                    .increment(batch.entries() as u64);
                return true;
            }
            Err(e) => {
                health.sink_failed(&e, batch.id().as_str(), attempt);
                let wait = backoff.next();
                let until = Instant::now() + wait;
                if let Some(limit) = give_up_at()
                    && until > limit
                {
                    return false;
                }
                let mut ticker =
                    tokio::time::interval_at(Instant::now() + touch_every, touch_every);
                let sleep = tokio::time::sleep_until(until);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        _ = ticker.tick() => touch().await,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<_> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}

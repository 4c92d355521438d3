//! The user's side: where batches go.

use std::{fmt::Display, future::Future};

use crate::Batch;

/// Where batches go: usually one database transaction per batch.
///
/// Delivery is **at least once**: a batch is delivered again after a sink error (with
/// backoff), after a crash between the sink's success and the queue's acknowledgement, or
/// when another instance takes over the entries a dead one left pending. A redelivered
/// batch has the same [`Batch::id`]; record it in the same transaction as the effect and
/// skip a batch whose id is already recorded (returning `Ok`), and every write takes effect
/// exactly once:
///
/// ```sql
/// BEGIN;
/// INSERT INTO applied_batches (id) VALUES ($1) ON CONFLICT DO NOTHING; -- 0 rows: done before
/// UPDATE products SET views = views + $2 WHERE id = $3;                 -- per item
/// COMMIT;
/// ```
///
/// An `Err` leaves the batch's entries in the queue (pending, on Redis); nothing is lost.
pub trait Sink<K, V>: Send + Sync + 'static {
    /// What a failed flush reports (logged once per change of state, counted).
    type Error: Display + Send + 'static;

    /// Applies one batch. Called by one task per queue, one batch at a time.
    fn flush(&self, batch: &Batch<K, V>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

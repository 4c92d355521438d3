//! The fleet-wide fill lease: [`turret_stampede::LeaseLock`] behind a small object-safe trait.

use std::{future::Future, pin::Pin, time::Duration};

use turret_stampede::{LeaseLock, LockBackend};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A held lease; dropping it releases the lease and wakes the waiters.
pub(crate) type Held = Box<dyn Send>;

/// What a miss learned from the fill lease.
pub(crate) enum LeaseOutcome {
    /// This instance fills; release (drop) after storing.
    Lead(Held),
    /// Another instance released its lease: read the storage again.
    Released,
    /// Waited `max_wait` in vain.
    TimedOut,
    /// The lock's backend failed: fill without it.
    Unavailable,
}

pub(crate) trait FillLease: Send + Sync + 'static {
    /// Takes the lease on `key`, or waits (at most `max_wait`) for its holder to release it.
    fn lead_or_wait(&self, key: String, max_wait: Duration) -> BoxFuture<'_, LeaseOutcome>;

    /// Takes the lease on `key` if it is free (a background refresh that nobody else runs).
    fn try_lead(&self, key: String) -> BoxFuture<'_, Option<Held>>;
}

impl<L: LockBackend> FillLease for LeaseLock<L> {
    fn lead_or_wait(&self, key: String, max_wait: Duration) -> BoxFuture<'_, LeaseOutcome> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + max_wait;
            let mut waiter = self.waiter(&key);
            match waiter.try_acquire().await {
                Ok(Some(guard)) => LeaseOutcome::Lead(Box::new(guard)),
                Ok(None) => {
                    if waiter.wait(deadline).await {
                        LeaseOutcome::Released
                    } else {
                        LeaseOutcome::TimedOut
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fill lease unavailable; filling without it");
                    LeaseOutcome::Unavailable
                }
            }
        })
    }

    fn try_lead(&self, key: String) -> BoxFuture<'_, Option<Held>> {
        Box::pin(async move {
            match self.try_acquire(&key).await {
                Ok(Some(guard)) => Some(Box::new(guard) as Held),
                Ok(None) => None,
                // Without the lock, refresh locally (the in-process guard still holds).
                Err(_) => Some(Box::new(()) as Held),
            }
        })
    }
}

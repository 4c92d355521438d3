//! Where in-flight counts live: [`MemoryConcurrency`] (one instance) or
//! [`RedisConcurrency`] (a fleet sharing one Redis).

use std::{fmt, future::Future, pin::Pin};

use crate::BackendError;

mod any;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use any::AnyConcurrency;
pub use memory::MemoryConcurrency;
#[cfg(feature = "redis")]
pub use redis::RedisConcurrency;

/// Proof that a request holds one of its key's in-flight slots; dropping it gives the slot
/// back (on Redis: removes the lease, which otherwise expires by itself).
pub struct Permit {
    in_flight: u32,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Permit {
    /// A permit; `release` runs once when it is dropped.
    pub fn new(in_flight: u32, release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            in_flight,
            release: Some(Box::new(release)),
        }
    }

    /// Requests of this key in flight, this one included, when it was granted.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// A boxed acquisition.
pub type AcquireFuture = Pin<Box<dyn Future<Output = Result<Option<Permit>, BackendError>> + Send>>;

/// An acquisition: decided at once (memory) or on its way (Redis). `None` means the key
/// already has `max` requests in flight.
pub enum Acquire {
    /// Decided without waiting.
    Ready(Result<Option<Permit>, BackendError>),
    /// Being decided.
    Pending(AcquireFuture),
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Acquire::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Acquire::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Where in-flight counts live.
pub trait ConcurrencyBackend: Clone + Send + Sync + 'static {
    /// Takes one of `max` slots of `key` under `policy`, if one is free.
    fn acquire(&self, policy: &str, key: &str, max: u32) -> Acquire;
}

//! A limit on requests in flight per key (`qu="concurrent-requests"` in the IETF draft).
//!
//! The same shape as the rate limiter: the layer builds the service, the service the
//! response future, the future the [`PermitBody`] that gives the slot back; in-flight counts
//! live in a [`ConcurrencyBackend`] (`backend/`: memory counts or Redis leases).

mod backend;
mod body;
mod future;
mod layer;
mod service;

#[cfg(feature = "redis")]
pub use backend::RedisConcurrency;
pub use backend::{
    Acquire, AcquireFuture, AnyConcurrency, ConcurrencyBackend, MemoryConcurrency, Permit,
};
pub use body::PermitBody;
pub use future::ConcurrencyFuture;
pub use layer::ConcurrencyLimitLayer;
pub use service::ConcurrencyLimit;

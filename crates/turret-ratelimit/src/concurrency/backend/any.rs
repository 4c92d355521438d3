//! [`AnyConcurrency`]: the in-flight count backend chosen at run time, one type whatever the
//! backend.

use super::{Acquire, ConcurrencyBackend, MemoryConcurrency};

/// An in-flight count backend chosen at run time — memory or Redis — behind one type, so
/// that [`ConcurrencyLimitLayer`](crate::ConcurrencyLimitLayer) is the same type whichever
/// the configuration picks (it is the layer's default backend). Dispatch is a `match`.
///
/// Build it with `ConcurrencyLimitLayer::redis` or
/// `ConcurrencyLimitLayer::backend_from`, or
/// convert a backend; [`ConcurrencyLimitLayer::backend`](crate::ConcurrencyLimitLayer::backend)
/// takes a concrete one for the generic form.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyConcurrency {
    /// [`MemoryConcurrency`]: one process.
    Memory(MemoryConcurrency),
    /// [`RedisConcurrency`](super::RedisConcurrency): leases shared by a fleet on one Redis.
    #[cfg(feature = "redis")]
    Redis(super::RedisConcurrency),
}

impl Default for AnyConcurrency {
    fn default() -> Self {
        AnyConcurrency::Memory(MemoryConcurrency::new())
    }
}

impl From<MemoryConcurrency> for AnyConcurrency {
    fn from(backend: MemoryConcurrency) -> Self {
        AnyConcurrency::Memory(backend)
    }
}

#[cfg(feature = "redis")]
impl From<super::RedisConcurrency> for AnyConcurrency {
    fn from(backend: super::RedisConcurrency) -> Self {
        AnyConcurrency::Redis(backend)
    }
}

#[cfg(feature = "redis")]
impl From<Option<turret_redis::Redis>> for AnyConcurrency {
    /// `Some`: a [`RedisConcurrency`](super::RedisConcurrency) on it; `None`: memory.
    fn from(redis: Option<turret_redis::Redis>) -> Self {
        match redis {
            Some(redis) => AnyConcurrency::Redis(super::RedisConcurrency::new(redis)),
            None => AnyConcurrency::default(),
        }
    }
}

impl ConcurrencyBackend for AnyConcurrency {
    fn acquire(&self, policy: &str, key: &str, max: u32) -> Acquire {
        match self {
            AnyConcurrency::Memory(b) => b.acquire(policy, key, max),
            #[cfg(feature = "redis")]
            AnyConcurrency::Redis(b) => b.acquire(policy, key, max),
        }
    }
}

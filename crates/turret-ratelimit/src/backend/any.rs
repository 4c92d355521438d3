//! [`AnyBackend`]: the rate-limit backend chosen at run time, one type whatever the backend.

use std::time::Duration;

use super::{Backend, Decide, MemoryBackend};
use crate::Plan;

/// A rate-limit backend chosen at run time — memory or Redis — behind one type, so that
/// [`RateLimitLayer`](crate::RateLimitLayer) is the same type whichever the configuration
/// picks (it is the layer's default backend). Dispatch is a `match`, not a box.
///
/// Build it with `RateLimitLayer::redis` or
/// `RateLimitLayer::backend_from`, or convert a
/// backend (`MemoryBackend::new().into()`). For the generic, zero-cost form, give
/// [`RateLimitLayer::backend`](crate::RateLimitLayer::backend) a concrete backend instead.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyBackend {
    /// [`MemoryBackend`]: one process.
    Memory(MemoryBackend),
    /// [`RedisBackend`](super::RedisBackend): one quota for a fleet on one Redis.
    #[cfg(feature = "redis")]
    Redis(super::RedisBackend),
}

impl Default for AnyBackend {
    fn default() -> Self {
        AnyBackend::Memory(MemoryBackend::new())
    }
}

impl From<MemoryBackend> for AnyBackend {
    fn from(backend: MemoryBackend) -> Self {
        AnyBackend::Memory(backend)
    }
}

#[cfg(feature = "redis")]
impl From<super::RedisBackend> for AnyBackend {
    fn from(backend: super::RedisBackend) -> Self {
        AnyBackend::Redis(backend)
    }
}

#[cfg(feature = "redis")]
impl From<Option<turret_redis::Redis>> for AnyBackend {
    /// `Some`: a [`RedisBackend`](super::RedisBackend) on it; `None`: a fresh
    /// [`MemoryBackend`].
    fn from(redis: Option<turret_redis::Redis>) -> Self {
        match redis {
            Some(redis) => AnyBackend::Redis(super::RedisBackend::new(redis)),
            None => AnyBackend::default(),
        }
    }
}

impl Backend for AnyBackend {
    fn decide(
        &self,
        policy: &str,
        key: &str,
        plan: &Plan,
        cost: u32,
        max_delay: Duration,
    ) -> Decide {
        match self {
            AnyBackend::Memory(b) => b.decide(policy, key, plan, cost, max_delay),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => b.decide(policy, key, plan, cost, max_delay),
        }
    }

    fn refund(&self, policy: &str, key: &str, plan: &Plan, cost: u32) {
        match self {
            AnyBackend::Memory(b) => b.refund(policy, key, plan, cost),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => b.refund(policy, key, plan, cost),
        }
    }

    fn is_local(&self) -> bool {
        match self {
            AnyBackend::Memory(b) => b.is_local(),
            #[cfg(feature = "redis")]
            AnyBackend::Redis(b) => b.is_local(),
        }
    }
}

//! [`AnyLock`]: the lease lock chosen at run time, one type whatever the backend.

use std::time::Duration;

use super::{Attempt, Lease, LockBackend, LockError, MemoryLock, ReleaseSignal};

/// A lock backend chosen at run time — memory or Redis — behind one type, so that
/// `StampedeCache` is the same type whichever the configuration picks. Dispatch is a `match`,
/// not a box: no allocation per call.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyLock {
    /// [`MemoryLock`]: the instances of one process.
    Memory(MemoryLock),
    /// [`RedisLock`](super::RedisLock): a fleet on one Redis.
    #[cfg(feature = "redis")]
    Redis(super::RedisLock),
}

impl Default for AnyLock {
    fn default() -> Self {
        AnyLock::Memory(MemoryLock::new())
    }
}

impl From<MemoryLock> for AnyLock {
    fn from(lock: MemoryLock) -> Self {
        AnyLock::Memory(lock)
    }
}

#[cfg(feature = "redis")]
impl From<super::RedisLock> for AnyLock {
    fn from(lock: super::RedisLock) -> Self {
        AnyLock::Redis(lock)
    }
}

impl LockBackend for AnyLock {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Attempt, LockError> {
        match self {
            AnyLock::Memory(l) => l.try_acquire(key, ttl).await,
            #[cfg(feature = "redis")]
            AnyLock::Redis(l) => l.try_acquire(key, ttl).await,
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        match self {
            AnyLock::Memory(l) => l.extend(lease, ttl).await,
            #[cfg(feature = "redis")]
            AnyLock::Redis(l) => l.extend(lease, ttl).await,
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        match self {
            AnyLock::Memory(l) => l.release(lease).await,
            #[cfg(feature = "redis")]
            AnyLock::Redis(l) => l.release(lease).await,
        }
    }

    fn release_signal(&self, key: &str) -> ReleaseSignal {
        match self {
            AnyLock::Memory(l) => l.release_signal(key),
            #[cfg(feature = "redis")]
            AnyLock::Redis(l) => l.release_signal(key),
        }
    }

    async fn next_fence(&self, key: &str) -> Result<u64, LockError> {
        match self {
            AnyLock::Memory(l) => l.next_fence(key).await,
            #[cfg(feature = "redis")]
            AnyLock::Redis(l) => l.next_fence(key).await,
        }
    }
}

//! Where rate-limit state lives: [`MemoryBackend`] (one instance) or [`RedisBackend`]
//! (a fleet sharing one Redis), or either chosen at run time ([`AnyBackend`]).

use std::{fmt, future::Future, pin::Pin};

use crate::{Decision, Quota};

mod any;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

pub use any::AnyBackend;
pub use memory::MemoryBackend;
#[cfg(feature = "redis")]
pub use redis::RedisBackend;

/// A boxed decision future.
pub type DecisionFuture = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>;

/// A decision: made at once (memory), or on its way (Redis).
pub enum Decide {
    /// Decided without waiting.
    Ready(Result<Decision, BackendError>),
    /// Being decided.
    Pending(DecisionFuture),
}

impl fmt::Debug for Decide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decide::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Decide::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// The one question a rate-limit backend answers, atomically: may `key` spend `cost` of
/// `quota` now, and what is left?
pub trait Backend: Send + Sync + 'static {
    /// Decides for one request. `policy` names the policy (keys of different policies are
    /// independent); `key` is the client's key (untrusted input).
    fn decide(&self, policy: &str, key: &str, quota: &Quota, cost: u32) -> Decide;

    /// Whether the backend is local to this process. A local backend needs no fallback,
    /// no over-limit cache and no failure mode.
    fn is_local(&self) -> bool {
        false
    }
}

/// The backend could not decide (Redis down, slow, or answered nonsense).
#[derive(Debug, Clone)]
pub struct BackendError {
    message: String,
    unavailable: bool,
}

impl BackendError {
    /// A backend error; `unavailable` when the store could not be reached in time.
    pub fn new(message: impl Into<String>, unavailable: bool) -> Self {
        Self {
            message: message.into(),
            unavailable,
        }
    }

    /// Whether the store could not be reached (as opposed to a malformed reply).
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate-limit backend error: {}", self.message)
    }
}

impl std::error::Error for BackendError {}

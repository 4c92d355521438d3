//! Where rate-limit state lives: [`MemoryBackend`] (one instance) or [`RedisBackend`]
//! (a fleet sharing one Redis), or either chosen at run time ([`AnyBackend`]).

use std::{fmt, future::Future, pin::Pin, time::Duration};

use crate::{Outcome, Plan};

mod any;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

pub use any::AnyBackend;
pub use memory::MemoryBackend;
#[cfg(feature = "redis")]
pub use redis::RedisBackend;

/// A boxed decision future.
pub type DecisionFuture = Pin<Box<dyn Future<Output = Result<Outcome, BackendError>> + Send>>;

/// A decision: made at once (memory), or on its way (Redis).
pub enum Decide {
    /// Decided without waiting.
    Ready(Result<Outcome, BackendError>),
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
/// every quota of `plan` now, and what is left?
pub trait Backend: Send + Sync + 'static {
    /// Decides for one request, all-or-nothing over the plan's limits: admitted only if every
    /// one admits, and a refusal spends nothing on any. `policy` names the policy (keys of
    /// different policies, and of different limits, are independent); `key` is the client's
    /// key (untrusted input).
    ///
    /// With `max_delay` above zero (delay mode; every limit is GCRA), a request over the rate
    /// that would be admitted within `max_delay` is admitted with its turn reserved, and the
    /// outcome's [`delay`](Outcome::delay) says how long it must wait for it.
    fn decide(
        &self,
        policy: &str,
        key: &str,
        plan: &Plan,
        cost: u32,
        max_delay: Duration,
    ) -> Decide;

    /// Gives back the turn of a request admitted with a delay that never ran (its client
    /// went away while it waited), so that cancelled waiters do not lower the rate served.
    /// The default does nothing.
    fn refund(&self, policy: &str, key: &str, plan: &Plan, cost: u32) {
        let _ = (policy, key, plan, cost);
    }

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

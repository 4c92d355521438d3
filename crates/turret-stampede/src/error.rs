//! The error every shared computation resolves its waiters with.

use std::{fmt, sync::Arc, time::Duration};

/// Why a shared computation did not produce a value for a caller.
///
/// `E` is the computation's own error: every caller sharing the computation gets a clone of
/// the same `E` (Go's `singleflight` semantics). Wrap an error that is not `Clone` in an
/// [`Arc`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The computation returned this error; every waiter gets a clone of it.
    Compute(E),
    /// The computation panicked. Every waiter gets this error, and the next call starts a
    /// fresh computation.
    Panicked(Arc<str>),
    /// This caller waited longer than its bound (see [`crate::SingleFlight::wait_timeout`]).
    /// The computation goes on for the others.
    Timeout(Duration),
    /// The computation ended without a result: its task was cancelled, which happens only
    /// when the Tokio runtime shuts down.
    Abandoned,
}

impl<E> Error<E> {
    /// The computation's own error, if this is one.
    pub fn compute(&self) -> Option<&E> {
        match self {
            Error::Compute(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the caller gave up waiting.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// Whether the computation panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Error::Panicked(_))
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Compute(e) => write!(f, "shared computation failed: {e}"),
            Error::Panicked(m) => write!(f, "shared computation panicked: {m}"),
            Error::Timeout(d) => {
                write!(f, "gave up waiting for the shared computation after {d:?}")
            }
            Error::Abandoned => f.write_str("shared computation was cancelled"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Compute(e) => Some(e),
            _ => None,
        }
    }
}

/// Extracts a panic's message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("(non-string panic payload)")
    }
}

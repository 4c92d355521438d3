//! What a write or a start can fail with.

use std::fmt;

/// Why [`WriteBehind::write`](crate::WriteBehind::write) did not accept an item. An error
/// means the item is **not** in the queue: the caller may retry, answer 503, or write
/// through.
#[derive(Debug)]
#[non_exhaustive]
pub enum WriteError {
    /// Backpressure: the queue holds `max_backlog` unflushed writes (the sink is slower than
    /// the writers, or failing). Nothing was added.
    Full {
        /// The configured bound.
        max_backlog: u64,
    },
    /// The queue was shut down (or every handle dropped).
    Closed,
    /// The item could not be encoded (postcard).
    Encode(String),
    /// Redis did not acknowledge the `XADD` (down, timed out, breaker open, …).
    #[cfg(feature = "redis")]
    Redis(turret_redis::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Full { max_backlog } => write!(
                f,
                "write-behind queue full: {max_backlog} writes not flushed yet"
            ),
            WriteError::Closed => f.write_str("write-behind queue is shut down"),
            WriteError::Encode(e) => write!(f, "write-behind item does not encode: {e}"),
            #[cfg(feature = "redis")]
            WriteError::Redis(e) => write!(f, "write-behind queue not written: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "redis")]
            WriteError::Redis(e) => Some(e),
            _ => None,
        }
    }
}

/// A configuration that cannot work, refused when the queue starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid write-behind configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

use std::{fmt, time::Duration};

/// What went wrong talking to Redis.
///
/// Every failure is one of these values; a Redis failure never panics. Layers map
/// [`Error::Timeout`] and [`Error::Unavailable`] to their documented degraded behaviour
/// (serve from origin, fail open or closed, coalesce locally).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The command did not complete within the per-command timeout.
    Timeout(Duration),
    /// The circuit breaker is open: Redis failed recently, so the command was not sent.
    /// This costs no network I/O.
    Unavailable,
    /// Redis (or the connection to it) answered with an error.
    Redis(redis::RedisError),
    /// The configuration cannot work: a malformed URL, a prefix containing `{` or `}`, …
    Config(String),
}

impl Error {
    /// Whether this error means Redis could not be reached in time (timeout, open breaker,
    /// connection or cluster failure), as opposed to a command that Redis rejected.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Timeout(_) | Error::Unavailable => true,
            Error::Redis(e) => is_infrastructure_error(e),
            Error::Config(_) => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout(d) => write!(f, "redis command timed out after {d:?}"),
            Error::Unavailable => f.write_str("redis unavailable: circuit breaker open"),
            Error::Redis(e) => write!(f, "redis error: {e}"),
            Error::Config(msg) => write!(f, "invalid redis configuration: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis(e)
    }
}

/// Whether a Redis error says something about the health of Redis (and so counts towards
/// the circuit breaker) rather than about the command (a Lua error, a wrong type, …), which
/// proves the server is alive.
pub(crate) fn is_infrastructure_error(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::AuthenticationFailed
        | ErrorKind::Client => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
        ),
        _ => e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal(),
    }
}

impl From<redis::ParsingError> for Error {
    fn from(e: redis::ParsingError) -> Self {
        Error::Redis(e.into())
    }
}

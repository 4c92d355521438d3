//! The response body of [`ResponseCache`](crate::ResponseCache): the inner body streamed
//! through untouched, a stored body, or a body the cache read to store it (what it read, then
//! the rest of one that sent more than its size hint promised, or the error that ended it).

use bytes::Bytes;
use http_body::Body;
pub use turret_body::ResponseBody;

/// A response body read up to the largest storable size.
pub(crate) struct Collected<B: Body>(turret_body::Collected<B>);

impl<B: Body> Collected<B> {
    /// The whole body as one buffer, when it ended cleanly within the limit and without
    /// trailers (an entry stores none).
    pub(crate) fn storable_bytes(&self) -> Option<Bytes> {
        match &self.0 {
            turret_body::Collected::Whole {
                chunks,
                trailers: None,
            } => Some(turret_body::concat(chunks)),
            _ => None,
        }
    }

    /// The body the client gets: as it would have been without the cache reading it.
    pub(crate) fn into_body(self) -> ResponseBody<B> {
        self.0.into_body()
    }
}

/// Reads `body` to its end, buffering at most `max` bytes: a body that sends more than its
/// size hint promised is not read past `max`, its rest is streamed after what was read.
pub(crate) async fn collect<B: Body>(body: B, max: u64) -> Collected<B> {
    Collected(turret_body::collect_bounded(body, max).await)
}

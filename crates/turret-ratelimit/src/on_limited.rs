//! What a refusal looks like: the [`OnLimited`] hook, what it is told ([`Limited`]), and the
//! default `429` ([`DefaultOnLimited`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::{Decision, Limit, Plan, Policy};

/// What a refusal looks like: implemented for closures `Fn(&Limited) -> Response<Bytes>`.
/// The layer adds `Retry-After` and the rate-limit fields afterwards.
pub trait OnLimited: Clone + Send + Sync + 'static {
    /// Builds the refusal.
    fn on_limited(&self, limited: &Limited<'_>) -> Response<Bytes>;
}

impl<F> OnLimited for F
where
    F: Fn(&Limited<'_>) -> Response<Bytes> + Clone + Send + Sync + 'static,
{
    fn on_limited(&self, limited: &Limited<'_>) -> Response<Bytes> {
        self(limited)
    }
}

/// What the [`OnLimited`] hook knows about a refusal.
#[derive(Debug)]
#[non_exhaustive]
pub struct Limited<'a> {
    /// The policy that refused.
    pub policy: &'a Policy,
    /// The plan the request was decided under.
    pub plan: &'a Plan,
    /// The plan's limit that refused (of several, the one it waits longest for).
    pub limit: &'a Limit,
    /// The client's key.
    pub key: &'a str,
    /// That limit's decision.
    pub decision: &'a Decision,
}

/// The default refusal: `429 Too Many Requests`, `text/plain`, naming the limit that
/// refused: `Too Many Requests (limit "default")`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultOnLimited;

impl OnLimited for DefaultOnLimited {
    fn on_limited(&self, limited: &Limited<'_>) -> Response<Bytes> {
        let body = format!("Too Many Requests (limit \"{}\")\n", limited.limit.name());
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    }
}

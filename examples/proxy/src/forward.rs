//! The innermost service: sends the prepared request to the origin over a pooled HTTP/1.1
//! client (hyper-util's legacy client), streaming both bodies, and removes the origin's
//! hop-by-hop fields from its response. The cache sits in front of it.
//!
//! The origin's failures are errors ([`ForwardError`]): the cache treats an error of its
//! inner service as the origin failing (it serves a stale copy when `stale-if-error`
//! allows) and passes it on untouched, and [`Front`](crate::front::Front), outside the
//! cache, answers `502 Bad Gateway` (unreachable) or `504 Gateway Timeout` (no response
//! head within `--origin-timeout`). A request whose *client* body failed is not the
//! origin's failure: it gets a placeholder response the cache neither stores nor takes for
//! an error, and `Front` answers 400.
//!
//! The response leaves with this proxy's HTTP version (RFC 9110 §6.2), never the
//! origin's: hyper's server sends it as HTTP/1.1, or HTTP/1.0 to an HTTP/1.0 client.

use std::{
    error::Error as _,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower_service::Service;

use crate::{front::ClientBody, headers};

/// The response body: the origin's, streamed, or the empty placeholder for a request
/// whose client body failed.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The origin failed to give a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForwardError {
    /// No connection, or the connection failed before a response head (→ 502).
    Unreachable,
    /// No response head within `--origin-timeout` (→ 504).
    TimedOut,
    /// A response this proxy cannot forward faithfully (→ 502, RFC 9110 §15.6.3: an
    /// invalid response from the inbound server): a transfer coding other than `chunked`,
    /// which the proxy never asked for (it sends no `TE`) and cannot decode, or a `101`
    /// switch to a protocol no request asked for (the proxy removes `Upgrade`).
    Unforwardable,
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unreachable => "the origin could not be reached",
            Self::TimedOut => "the origin did not answer in time",
            Self::Unforwardable => "the origin's response cannot be forwarded",
        })
    }
}

impl std::error::Error for ForwardError {}

/// How long a TCP connect to the origin may take before the request gets a 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection to the origin is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends requests to the origin. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    client: Client<HttpConnector, ClientBody>,
    head_timeout: Duration,
}

impl Forward {
    /// A client whose requests fail with [`ForwardError::TimedOut`] when the origin's
    /// response head takes longer than `head_timeout` (the body may then take as long as
    /// it takes).
    pub(crate) fn new(head_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client,
            head_timeout,
        }
    }
}

impl Service<Request<ClientBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ClientBody>) -> Self::Future {
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let client_body = req.body().failure();
        let exchange = self.client.request(req);
        let head_timeout = self.head_timeout;
        Box::pin(async move {
            let res = match tokio::time::timeout(head_timeout, exchange).await {
                Ok(Ok(res)) => res,
                Ok(Err(_)) if client_body.as_ref().is_some_and(|b| b.failed()) => {
                    // The client's body broke the exchange, not the origin: neither an error
                    // (the cache would serve stale-if-error) nor a 5xx; `Front` answers 400
                    // instead of this. Only requests the cache merely forwards have content
                    // (a GET or HEAD with content goes around it), so nothing is stored or
                    // invalidated for it.
                    tracing::debug!(%method, %uri, "the client's request body failed");
                    let mut res = Response::new(Either::Right(Full::new(Bytes::new())));
                    *res.status_mut() = StatusCode::BAD_REQUEST;
                    res.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    return Ok(res);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%method, %uri, error = %chain(&e), "origin unreachable: 502");
                    return Err(ForwardError::Unreachable);
                }
                Err(_) => {
                    tracing::warn!(%method, %uri, timeout = ?head_timeout, "origin too slow: 504");
                    return Err(ForwardError::TimedOut);
                }
            };
            let (mut parts, body) = res.into_parts();
            if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                // RFC 9110 §15.2.2: a server switches only to a protocol the request's
                // `Upgrade` named, and the proxy removes `Upgrade` (it forwards no upgrades).
                tracing::warn!(%method, %uri, "origin switched protocols unasked: 502");
                return Err(ForwardError::Unforwardable);
            }
            let has_body = method != Method::HEAD
                && parts.status != StatusCode::NO_CONTENT
                && parts.status != StatusCode::NOT_MODIFIED;
            if has_body && headers::has_transfer_coding_but_chunked(&parts.headers) {
                // hyper's client removed only the final `chunked`: the body is still coded.
                // (A HEAD or 304 response's field only says what a GET would get, §6.1.)
                tracing::warn!(%method, %uri, "origin applied a transfer coding other than chunked: 502");
                return Err(ForwardError::Unforwardable);
            }
            headers::remove_hop_by_hop(&mut parts.headers);
            // RFC 9110 §6.2: this proxy's version, not the origin's (hyper sends HTTP/1.0
            // instead to an HTTP/1.0 client). Set before the cache, so no stored response
            // remembers another.
            parts.version = Version::HTTP_11;
            Ok(Response::from_parts(parts, Either::Left(body)))
        })
    }
}

/// An error and its sources on one line (`client error (Connect): tcp connect error: …`).
fn chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

//! The innermost service: sends the prepared request to the origin over a pooled HTTP/1.1
//! client (hyper-util's legacy client), streaming both bodies, and removes the origin's
//! hop-by-hop fields from its response. The cache sits in front of it.
//!
//! Failures are responses, never errors, so that the cache can apply `stale-if-error`
//! (it does for 500, 502, 503 and 504): the origin unreachable → `502 Bad Gateway`, no
//! response head within `--origin-timeout` → `504 Gateway Timeout`.

use std::{
    convert::Infallible,
    error::Error as _,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower_service::Service;

use crate::headers;

/// The response body: the origin's, streamed, or one the proxy made (502, 504, 501).
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// How long a TCP connect to the origin may take before the request gets a 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection to the origin is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends requests to the origin. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    client: Client<HttpConnector, Incoming>,
    head_timeout: Duration,
}

impl Forward {
    /// A client whose requests get a 504 when the origin's response head takes longer
    /// than `head_timeout` (the body may then take as long as it takes).
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

impl Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        if req.method() == Method::CONNECT || req.uri().authority().is_none() {
            // CONNECT tunnels and `OPTIONS *` (asterisk-form) have no origin-form target.
            return Box::pin(std::future::ready(Ok(plain(
                StatusCode::NOT_IMPLEMENTED,
                "this proxy forwards requests for paths of its origin only (no CONNECT, no `*`)\n",
            ))));
        }
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let exchange = self.client.request(req);
        let head_timeout = self.head_timeout;
        Box::pin(async move {
            let res = match tokio::time::timeout(head_timeout, exchange).await {
                Ok(Ok(res)) => res,
                Ok(Err(e)) => {
                    tracing::warn!(%method, %uri, error = %chain(&e), "origin unreachable: 502");
                    return Ok(plain(
                        StatusCode::BAD_GATEWAY,
                        "the origin could not be reached\n",
                    ));
                }
                Err(_) => {
                    tracing::warn!(%method, %uri, timeout = ?head_timeout, "origin too slow: 504");
                    return Ok(plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the origin did not answer in time\n",
                    ));
                }
            };
            let (mut parts, body) = res.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        })
    }
}

/// A small `text/plain` answer of the proxy's own.
fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
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

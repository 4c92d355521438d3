//! The outermost service, in front of the cache: refuses requests whose framing the proxy
//! cannot forward, watches the client's request body, and turns [`Forward`]'s failures into
//! the proxy's own responses.
//!
//! ```text
//! client → Front (400 / 501 refusals) → prepare → cache → Forward → origin
//!          Front ← 502 / 504 / 400 made here ← cache ← Err(ForwardError) or a failed client body
//! ```
//!
//! The proxy's own responses are made here, outside the cache, so that they carry no
//! `Cache-Status` or `X-Cache` (RFC 9211 §2: the field describes how a cache handled a
//! response from the next hop; these never were one). The cache still sees the origin's
//! failures, as errors of its inner service, and serves a stale copy when
//! `stale-if-error` allows; a client's broken body is never mistaken for one.
//!
//! [`Forward`]: crate::forward::Forward

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version,
    header::{
        ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, COOKIE, HOST, MAX_FORWARDS,
        PROXY_AUTHORIZATION, TRANSFER_ENCODING,
    },
    uri::Authority,
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower_service::Service;

use turret_cache::{PurgeService, ResponseBody, ResponseCache};

use crate::{
    config::Origin,
    forward::{Forward, ForwardError, ProxyBody},
    headers,
    proxy::prepare,
};

/// The response body: the cache's, `Forward`'s (a request around the cache), or one of the
/// proxy's own answers.
pub(crate) type FrontBody = Either<Either<ResponseBody<ProxyBody>, ProxyBody>, Full<Bytes>>;

/// The service hyper's server calls: [`check`] the request, [`prepare`] it, send it through
/// the cache to `Forward` (a `GET` / `HEAD` with content goes around the cache), answer
/// failures itself.
#[derive(Debug, Clone)]
pub(crate) struct Front {
    cache: ResponseCache<Forward>,
    purge: Option<PurgeService>,
    forward: Forward,
    origin: Arc<Origin>,
    peer: SocketAddr,
}

impl Front {
    /// Requests from `peer` through `cache` (whose inner service is `forward`) to `origin`;
    /// `PURGE` answered by `purge` (405 without it).
    pub(crate) fn new(
        cache: ResponseCache<Forward>,
        purge: Option<PurgeService>,
        origin: Arc<Origin>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            forward: cache.get_ref().clone(),
            cache,
            purge,
            origin,
            peer,
        }
    }
}

impl Service<Request<Incoming>> for Front {
    type Response = Response<FrontBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready: `Forward` is (its pool connects per request), and the
        // cache is as ready as `Forward`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if let Err(refusal) = check(&req) {
            tracing::debug!(
                method = %req.method(),
                uri = %req.uri(),
                status = refusal.status.as_u16(),
                reason = refusal.text.trim_end(),
                "request refused"
            );
            return Box::pin(std::future::ready(Ok(own(
                refusal.status,
                refusal.text,
                true,
            ))));
        }
        if req.method().as_str() == "PURGE" {
            // Never forwarded: answered here, by the purge service or with a 405.
            let Some(purge) = self.purge.clone() else {
                let mut res = own(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "PURGE is not enabled on this proxy (start it with --purge-token)\n",
                    false,
                );
                res.headers_mut().insert(
                    ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
                );
                return Box::pin(std::future::ready(Ok(res)));
            };
            // The target rewritten as for the cache, so that the purge names the same key.
            let req = prepare(req, &self.origin, self.peer);
            return Box::pin(async move { Ok(purge.purge(req).await.map(Either::Right)) });
        }
        if let Some(res) = max_forwards(&mut req) {
            return Box::pin(std::future::ready(Ok(res)));
        }
        // `body_failed` is `Some` exactly when the request has content.
        let (req, body_failed) = ClientBody::wrap(req);
        let mut req = prepare(req, &self.origin, self.peer);
        let exchange = if body_failed.is_some()
            && (req.method() == Method::GET || req.method() == Method::HEAD)
        {
            // RFC 9110 §9.3.1: content on a GET has no generally defined semantics, and the
            // cache's key does not include it: two such requests an origin tells apart would
            // share an entry. They go to the origin around the cache, content and all
            // (hyper's client sends a GET body of unknown size only when told it is chunked).
            if req.body().size_hint().exact().is_none() {
                req.headers_mut()
                    .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            Exchange::Around(self.forward.call(req))
        } else {
            Exchange::Cached(self.cache.call(req))
        };
        Box::pin(async move {
            let res = match exchange {
                Exchange::Cached(cached) => cached.await.map(|res| res.map(Either::Left)),
                Exchange::Around(forwarded) => forwarded.await.map(|res| res.map(Either::Right)),
            };
            // Whatever came back (the origin's answer to a cut-off request, or `Forward`'s
            // placeholder): the client's request was broken, the client's fault.
            if body_failed.as_ref().is_some_and(|f| f.failed()) {
                return Ok(own(
                    StatusCode::BAD_REQUEST,
                    "the request's body is malformed or incomplete\n",
                    true,
                ));
            }
            Ok(match res {
                Ok(res) => res.map(Either::Left),
                Err(ForwardError::Unforwardable) => own(
                    StatusCode::BAD_GATEWAY,
                    "the origin's response cannot be forwarded\n",
                    false,
                ),
                Err(ForwardError::Unreachable) => own(
                    StatusCode::BAD_GATEWAY,
                    "the origin could not be reached\n",
                    false,
                ),
                Err(ForwardError::TimedOut) => own(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the origin did not answer in time\n",
                    false,
                ),
            })
        })
    }
}

/// RFC 9110 §7.6.2: an intermediary checks and updates `Max-Forwards` on `TRACE` and
/// `OPTIONS`. At 0 it answers as the final recipient (an `OPTIONS`: `200` with no content;
/// a `TRACE`: `200` reflecting the request head as received, without the fields that carry
/// credentials, §9.3.8); above 0 the request is forwarded with the value less one. A
/// value that is not `1*DIGIT`, or more than one line, is left alone.
fn max_forwards(req: &mut Request<Incoming>) -> Option<Response<FrontBody>> {
    let method = req.method();
    if method != Method::OPTIONS && method != Method::TRACE {
        return None;
    }
    let mut values = req.headers().get_all(MAX_FORWARDS).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.iter().all(|d| *d == b'0') {
        let mut res = if req.method() == Method::TRACE {
            let mut res = Response::new(Either::Right(Full::new(Bytes::from(reflect(req)))));
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("message/http"));
            res
        } else {
            Response::new(Either::Right(Full::new(Bytes::new())))
        };
        // The request's body, if any, is not read.
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    // Any number of digits: values past u64 are as good as infinite.
    let n: u64 = value.to_str().ok()?.parse().unwrap_or(u64::MAX);
    req.headers_mut()
        .insert(MAX_FORWARDS, HeaderValue::from(n - 1));
    None
}

/// A `TRACE` request's head as received, as `message/http` content.
fn reflect<B>(req: &Request<B>) -> Vec<u8> {
    let version = if req.version() == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut out = format!("{} {} {version}\r\n", req.method(), req.uri()).into_bytes();
    for (name, value) in req.headers() {
        if [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE].contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The exchange a request makes: through the cache, or around it.
#[expect(
    clippy::large_enum_variant,
    reason = "lives in the request's one boxed future; boxing the cache's future too would be a second allocation per request"
)]
enum Exchange {
    Cached(<ResponseCache<Forward> as Service<Request<ClientBody>>>::Future),
    Around(<Forward as Service<Request<ClientBody>>>::Future),
}

/// A small `text/plain` answer of the proxy's own; `close` ends the connection after it
/// (the request's body may be unread or unreadable, so the next request's start is unknown).
fn own(status: StatusCode, text: &'static str, close: bool) -> Response<FrontBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// Why a request is answered by the proxy without being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) text: &'static str,
}

impl Refusal {
    const fn new(status: StatusCode, text: &'static str) -> Self {
        Self { status, text }
    }
}

/// What hyper's server accepts but this proxy must not forward:
///
/// - `Host` (RFC 9112 §3.2): an HTTP/1.1 request without it, any request with more than one
///   `Host` line, or one whose value is not `uri-host [":" port]` (RFC 9110 §7.2; empty is
///   allowed) → 400.
/// - `Transfer-Encoding` (RFC 9112 §6.1): hyper decodes the final `chunked` and leaves any
///   other coding in the body; forwarding it without the field would hand the origin
///   bytes it cannot decode. A coding other than `chunked` → 501 (the proxy does not
///   implement it), `chunked` twice → 400 (no sender applies it twice).
/// - The target: `CONNECT` (authority-form) and `OPTIONS *` (asterisk-form) → 501; the
///   proxy forwards requests for paths of its origin only.
///
/// hyper has already refused what it cannot parse: a `Transfer-Encoding` whose final
/// coding is not `chunked`, conflicting `Content-Length`s, a `Transfer-Encoding` on
/// HTTP/1.0.
pub(crate) fn check<B>(req: &Request<B>) -> Result<(), Refusal> {
    check_host(req.version(), req.headers())?;
    check_transfer_codings(req.headers())?;
    let uri = req.uri();
    if req.method() == Method::CONNECT
        || (uri.authority().is_none() && !uri.path().starts_with('/'))
    {
        return Err(Refusal::new(
            StatusCode::NOT_IMPLEMENTED,
            "this proxy forwards requests for paths of its origin only (no CONNECT, no `*`)\n",
        ));
    }
    Ok(())
}

fn check_host(version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_09 || version == Version::HTTP_10 => Ok(()),
        (None, _) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs a Host field\n",
        )),
        (Some(_), Some(_)) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "more than one Host field\n",
        )),
        (Some(host), None) if is_host(host.as_bytes()) => Ok(()),
        (Some(_), None) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the Host field is not a host and optional port\n",
        )),
    }
}

/// RFC 9110 §7.2: `Host = uri-host [ ":" port ]`, or empty.
fn is_host(value: &[u8]) -> bool {
    value.is_empty() || (!value.contains(&b'@') && Authority::try_from(value).is_ok())
}

fn check_transfer_codings(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut chunked = 0;
    for name in headers::transfer_codings(headers) {
        if !name.eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "this proxy implements no transfer coding but chunked\n",
            ));
        }
        chunked += 1;
    }
    if chunked > 1 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "chunked is applied more than once\n",
        ));
    }
    Ok(())
}

/// The client's request body on its way to the origin, noting whether reading it failed
/// (malformed chunked framing, a chunk extension over hyper's limit, the client gone before
/// the end): then the request is the client's fault, not the origin's.
///
/// Its `Default` is an empty body: the response cache sends a revalidation again without its
/// conditions when the origin's 304 selects nothing it stored (RFC 9111 §4.3.4), and needs a
/// body for that second GET.
#[derive(Debug, Default)]
pub(crate) struct ClientBody {
    /// `None`: empty (the cache's second request of a revalidation).
    body: Option<Incoming>,
    /// `None` for a request without a body: nothing can fail, nothing is allocated.
    failed: Option<Arc<BodyFailed>>,
}

/// Set once the client's request body failed to be read.
#[derive(Debug, Default)]
pub(crate) struct BodyFailed(AtomicBool);

impl BodyFailed {
    /// Whether the client's body failed.
    pub(crate) fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl ClientBody {
    /// The request with its body watched, and the flag [`Front`] reads afterwards.
    fn wrap(req: Request<Incoming>) -> (Request<ClientBody>, Option<Arc<BodyFailed>>) {
        let (parts, body) = req.into_parts();
        let failed = (!body.is_end_stream()).then(Arc::default);
        let watched = ClientBody {
            body: Some(body),
            failed: failed.clone(),
        };
        (Request::from_parts(parts, watched), failed)
    }

    /// A handle that tells, once the request was sent, whether the body failed.
    pub(crate) fn failure(&self) -> Option<Arc<BodyFailed>> {
        self.failed.clone()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(body) = &mut this.body else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            tracing::debug!(error = %e, "the client's request body could not be read");
            if let Some(failed) = &this.failed {
                failed.0.store(true, Ordering::Release);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field lines: name, value.
    type Fields<'a> = &'a [(&'static str, &'static [u8])];

    fn request(version: Version, fields: Fields<'_>) -> Request<()> {
        let mut req = Request::builder().uri("/x").version(version);
        for (name, value) in fields {
            req = req.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        req.body(()).unwrap()
    }

    fn status(req: &Request<()>) -> u16 {
        check(req).map_or_else(|r| r.status.as_u16(), |()| 200)
    }

    #[test]
    fn host_is_required_once_on_http_1_1_and_must_be_a_host_rfc9112_3_2() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        let cases: [(Version, Fields<'_>, u16); 11] = [
            (HTTP_11, &[("host", b"a.example")], 200),
            (HTTP_11, &[("host", b"a.example:8080")], 200),
            (HTTP_11, &[("host", b"[2001:db8::1]:80")], 200),
            (HTTP_11, &[("host", b"")], 200),
            (HTTP_10, &[], 200),
            (HTTP_11, &[], 400),
            (
                HTTP_11,
                &[("host", b"a.example"), ("host", b"a.example")],
                400,
            ),
            (
                HTTP_10,
                &[("host", b"a.example"), ("host", b"b.example")],
                400,
            ),
            (HTTP_11, &[("host", b"user@a.example")], 400),
            (HTTP_11, &[("host", b"a b")], 400),
            (HTTP_11, &[("host", b"a.example/path")], 400),
        ];
        for (version, fields, expected) in cases {
            assert_eq!(
                status(&request(version, fields)),
                expected,
                "{version:?} {fields:?}"
            );
        }
    }

    #[test]
    fn only_chunked_once_is_a_transfer_coding_the_proxy_forwards_rfc9112_6_1() {
        let cases: [(&[&[u8]], u16); 8] = [
            (&[b"chunked"], 200),
            (&[b"Chunked"], 200),
            (&[b" , chunked ,"], 200),
            (&[b"gzip, chunked"], 501),
            (&[b"gzip", b"chunked"], 501),
            (&[b"x-custom;q=1, chunked"], 501),
            (&[b"chunked, chunked"], 400),
            (&[b"chunked", b"chunked"], 400),
        ];
        for (values, expected) in cases {
            let fields: Vec<(&str, &[u8])> =
                values.iter().map(|v| ("transfer-encoding", *v)).collect();
            let mut all = vec![("host", &b"a.example"[..])];
            all.extend(fields);
            assert_eq!(
                status(&request(Version::HTTP_11, &all)),
                expected,
                "{values:?}"
            );
        }
    }

    #[test]
    fn connect_and_asterisk_targets_are_not_forwarded() {
        let connect = Request::builder()
            .method(Method::CONNECT)
            .uri("a.example:443")
            .header("host", "a.example:443")
            .body(())
            .unwrap();
        assert_eq!(status(&connect), 501);
        let asterisk = Request::builder()
            .method(Method::OPTIONS)
            .uri("*")
            .header("host", "a.example")
            .body(())
            .unwrap();
        assert_eq!(status(&asterisk), 501);
        let absolute = Request::builder()
            .uri("http://a.example/x")
            .header("host", "a.example")
            .body(())
            .unwrap();
        assert_eq!(status(&absolute), 200);
    }
}

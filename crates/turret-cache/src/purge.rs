//! Purge over HTTP for operators: [`PurgeService`], a tower service that purges a URL (every
//! Vary variant) or tags, hard or soft, through the layer's storage (so fleet-wide with a
//! Redis or two-tier storage, every L1 included), behind a mandatory [`PurgeAuth`].

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header, request};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_service::Service;

use crate::{CacheInvalidator, admit::split_tags};

/// The most tags one purge request may name.
pub const MAX_PURGE_TAGS: usize = 256;

/// The longest target (the `url` parameter or the request target) and the longest tag a
/// purge request may carry, in bytes.
pub const MAX_PURGE_TARGET: usize = 8 * 1024;

/// Who may purge: a bearer token (`Authorization: Bearer <token>`, RFC 6750, compared in
/// constant time) or a predicate of your own over the request head (a peer address in the
/// extensions, a header your gateway sets, …).
#[derive(Clone)]
pub struct PurgeAuth(AuthKind);

#[derive(Clone)]
enum AuthKind {
    /// The SHA-256 of the token: comparing digests takes the same time whatever the token
    /// sent, its length included.
    Bearer([u8; 32]),
    Predicate(Arc<dyn Fn(&request::Parts) -> bool + Send + Sync>),
}

impl fmt::Debug for PurgeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            AuthKind::Bearer(_) => f.write_str("PurgeAuth::Bearer(<redacted>)"),
            AuthKind::Predicate(_) => f.write_str("PurgeAuth::Predicate"),
        }
    }
}

/// A purge token that cannot work: empty, or with bytes a header cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPurgeToken(&'static str);

impl fmt::Display for InvalidPurgeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid purge token: {}", self.0)
    }
}

impl std::error::Error for InvalidPurgeToken {}

impl PurgeAuth {
    /// Requests must carry `Authorization: Bearer <token>`. The token must be 16 to 4096
    /// visible ASCII characters without spaces (RFC 6750 `b64token`-like); a missing or
    /// malformed field is `401`, a wrong token `403`.
    pub fn bearer(token: impl AsRef<str>) -> Result<Self, InvalidPurgeToken> {
        let token = token.as_ref();
        if token.len() < 16 {
            return Err(InvalidPurgeToken("shorter than 16 characters"));
        }
        if token.len() > 4096 {
            return Err(InvalidPurgeToken("longer than 4096 characters"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidPurgeToken(
                "only visible ASCII characters, no spaces",
            ));
        }
        Ok(Self(AuthKind::Bearer(Sha256::digest(token).into())))
    }

    /// Requests are allowed when `allow` returns true, refused with `403` otherwise.
    pub fn predicate(allow: impl Fn(&request::Parts) -> bool + Send + Sync + 'static) -> Self {
        Self(AuthKind::Predicate(Arc::new(allow)))
    }

    /// `Ok` if `parts` may purge, the refusal otherwise.
    fn check(&self, parts: &request::Parts) -> Result<(), Refusal> {
        match &self.0 {
            AuthKind::Predicate(allow) => allow(parts).then_some(()).ok_or(Refusal::NotAllowed),
            AuthKind::Bearer(expected) => {
                let sent = bearer_token(&parts.headers).ok_or(Refusal::NoToken)?;
                let sent: [u8; 32] = Sha256::digest(sent).into();
                if bool::from(sent.ct_eq(expected)) {
                    Ok(())
                } else {
                    Err(Refusal::WrongToken)
                }
            }
        }
    }
}

/// Why a purge request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `401`: no bearer token.
    NoToken,
    /// `403`: the wrong token.
    WrongToken,
    /// `403`: the predicate said no.
    NotAllowed,
}

impl Refusal {
    fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::NoToken => {
                let mut res = answer(
                    StatusCode::UNAUTHORIZED,
                    "purging needs Authorization: Bearer <token>",
                );
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"purge\""),
                );
                res
            }
            Refusal::WrongToken => answer(StatusCode::FORBIDDEN, "wrong purge token"),
            Refusal::NotAllowed => answer(StatusCode::FORBIDDEN, "not allowed to purge"),
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive, RFC 9110
/// §11.1); `None` when the field is missing, repeated or another scheme.
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Where a purge request names the URL to purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetFrom {
    /// A service mounted at a path of its own: the `url` query parameter.
    Query,
    /// The request's own target (`PURGE /path?query`), as a caching proxy takes it.
    RequestTarget,
}

/// Purges stored responses on request. Every purge goes through the layer's
/// [`CacheInvalidator`], so with a Redis or two-tier storage it is fleet-wide, every
/// instance's L1 included, and matches keys exactly (no ban list, no pattern).
///
/// Mounted at a path of your choice ([`PurgeService::new`]), it takes `POST` (or `PURGE`):
///
/// - `?url=/products/7?page=2` (percent-encoded; a path, resolved against the request's
///   `Host`, or an absolute `http://host/path`): every stored variant of that URL;
/// - `Surrogate-Key: product:7 product-lists` (space-, comma- or tab-separated, as CDNs
///   write it): every response stored with any of these tags;
/// - `Soft-Purge: 1`: mark them stale instead of removing them (served stale while one
///   request revalidates, where the policy allows it).
///
/// [`PurgeService::for_request_target`] is the form a caching proxy uses for `PURGE
/// /path?query`: the request's own target is the URL.
///
/// The answer is `200` with `{"purged": N}`, `N` the number of keys (URLs, each with all
/// its variants; or tagged keys) that held responses; `401`/`403` for a missing/wrong
/// token, `400` for a request naming neither a URL nor a tag (or a malformed one), `405`
/// for another method, `503` when the storage failed. Every answer carries
/// `Cache-Control: no-store`.
///
/// ```
/// use axum::{Router, routing::get};
/// use turret_cache::{PurgeAuth, PurgeService, ResponseCacheLayer};
///
/// let cache = ResponseCacheLayer::new();
/// let purge = PurgeService::new(
///     cache.invalidator(),
///     PurgeAuth::bearer("a-long-random-operator-token").unwrap(),
/// );
/// let app: Router = Router::new()
///     .route("/products/{id}", get(|| async { "a product" }))
///     .layer(cache)
///     // Outside the cache layer: a purge is never cached and never reaches a handler.
///     .route_service("/admin/purge", purge);
/// ```
#[derive(Clone)]
pub struct PurgeService {
    invalidator: CacheInvalidator,
    auth: PurgeAuth,
    target: TargetFrom,
}

impl fmt::Debug for PurgeService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeService")
            .field("auth", &self.auth)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What one purge request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Purge {
    Url(Uri),
    Tags(Vec<String>),
}

impl PurgeService {
    /// A purge service to mount at a path of its own: the URL in the `url` query parameter,
    /// or tags in `Surrogate-Key`.
    pub fn new(invalidator: CacheInvalidator, auth: PurgeAuth) -> Self {
        Self {
            invalidator,
            auth,
            target: TargetFrom::Query,
        }
    }

    /// The proxy form: a `PURGE` request's own target is the URL to purge (unless it carries
    /// `Surrogate-Key`, a tag purge). Give it the request as the cache layer sees it (a
    /// proxy that rewrites targets to its origin rewrites the `PURGE` the same way), so that
    /// the key matches.
    pub fn for_request_target(mut self) -> Self {
        self.target = TargetFrom::RequestTarget;
        self
    }

    /// Answers one purge request (authorization, parsing, the purge itself).
    pub async fn purge<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let (parts, _body) = req.into_parts();
        let allowed = match self.target {
            TargetFrom::Query => parts.method == Method::POST || parts.method.as_str() == "PURGE",
            TargetFrom::RequestTarget => parts.method.as_str() == "PURGE",
        };
        if !allowed {
            let mut res = answer(StatusCode::METHOD_NOT_ALLOWED, "purge with POST or PURGE");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, PURGE"));
            return res;
        }
        if let Err(refused) = self.auth.check(&parts) {
            metrics::counter!("turret_cache_purges_total", "outcome" => "refused").increment(1);
            return refused.response();
        }
        let what = match parse(&parts, self.target) {
            Ok(what) => what,
            Err(message) => return answer(StatusCode::BAD_REQUEST, message),
        };
        let soft = parts
            .headers
            .get("soft-purge")
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
        let (kind, result) = match &what {
            Purge::Url(uri) => {
                let f = if soft {
                    self.invalidator.soft_purge(uri)
                } else {
                    self.invalidator.invalidate(uri)
                };
                ("url", f.await)
            }
            Purge::Tags(tags) => {
                let mut total = Ok(0);
                for tag in tags {
                    let f = if soft {
                        self.invalidator.soft_purge_tag(tag)
                    } else {
                        self.invalidator.invalidate_tag(tag)
                    };
                    match (f.await, &mut total) {
                        (Ok(n), Ok(sum)) => *sum += n,
                        (Err(e), Ok(_)) => total = Err(e),
                        (_, Err(_)) => {}
                    }
                }
                ("tag", total)
            }
        };
        match result {
            Ok(purged) => {
                metrics::counter!("turret_cache_purges_total", "outcome" => "purged", "kind" => kind)
                    .increment(1);
                tracing::info!(?what, soft, purged, "purged on request");
                let mut res = json(StatusCode::OK, format!("{{\"purged\":{purged}}}"));
                res.headers_mut().insert(
                    "soft-purge",
                    HeaderValue::from_static(if soft { "1" } else { "0" }),
                );
                res
            }
            Err(e) => {
                metrics::counter!("turret_cache_purges_total", "outcome" => "failed", "kind" => kind)
                    .increment(1);
                tracing::warn!(error = %e, ?what, "purge failed");
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cache storage failed; nothing or part was purged: retry",
                )
            }
        }
    }
}

/// What `parts` asks to purge.
fn parse(parts: &request::Parts, from: TargetFrom) -> Result<Purge, &'static str> {
    let mut keys = parts.headers.get_all("surrogate-key").iter().peekable();
    if keys.peek().is_some() {
        let mut tags: Vec<String> = Vec::new();
        for value in keys {
            let value = value
                .to_str()
                .map_err(|_| "Surrogate-Key must be visible ASCII")?;
            for tag in split_tags(value) {
                if tag.len() > MAX_PURGE_TARGET {
                    return Err("a tag is longer than 8 KiB");
                }
                if !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_owned());
                }
                if tags.len() > MAX_PURGE_TAGS {
                    return Err("more than 256 tags in one purge");
                }
            }
        }
        if tags.is_empty() {
            return Err("Surrogate-Key names no tag");
        }
        return Ok(Purge::Tags(tags));
    }
    let target = match from {
        TargetFrom::RequestTarget => parts.uri.clone(),
        TargetFrom::Query => {
            let query = parts.uri.query().unwrap_or("");
            let mut found = None;
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if name == "url" {
                    if found.is_some() {
                        return Err("give one url parameter");
                    }
                    found = Some(value);
                }
            }
            let Some(raw) = found else {
                return Err("name a URL (?url=/path) or tags (Surrogate-Key)");
            };
            if raw.len() > MAX_PURGE_TARGET * 3 {
                return Err("the url is longer than 8 KiB");
            }
            let decoded: Vec<u8> =
                percent_encoding::percent_decode_str(&raw.replace('+', " ")).collect();
            Uri::try_from(decoded).map_err(|_| "the url parameter is not a URL")?
        }
    };
    if target.to_string().len() > MAX_PURGE_TARGET {
        return Err("the url is longer than 8 KiB");
    }
    absolute(target, &parts.headers).map(Purge::Url)
}

/// `uri` as an absolute URL: as given, or its path at the request's `Host` (http).
fn absolute(uri: Uri, headers: &HeaderMap) -> Result<Uri, &'static str> {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Ok(uri);
    }
    if uri.authority().is_some() || !uri.path().starts_with('/') {
        return Err("the url must be a path (/products/7) or an absolute http(s) URL");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or("a path needs the request's Host to name its site")?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(path)
        .build()
        .map_err(|_| "the Host and url do not make a URL")
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A JSON error: `{"error": "<message>"}` (the messages are ours, plain ASCII).
fn answer(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, format!("{{\"error\":\"{message}\"}}"))
}

impl<B: Send + 'static> Service<Request<B>> for PurgeService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.purge(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_tokens_are_checked_whatever_the_case_of_the_scheme() {
        let auth = PurgeAuth::bearer("0123456789abcdef-token").unwrap();
        let status = |headers: &[(&str, &str)]| {
            auth.check(&head("POST", "/", headers))
                .err()
                .map(|r| r.response().status())
        };
        assert_eq!(
            status(&[("authorization", "Bearer 0123456789abcdef-token")]),
            None
        );
        assert_eq!(
            status(&[("authorization", "bearer 0123456789abcdef-token")]),
            None
        );
        assert_eq!(status(&[]), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(&[("authorization", "Basic dXNlcjpwYXNz")]),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(&[("authorization", "Bearer ")]),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(&[("authorization", "Bearer 0123456789abcdef-toke")]),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(&[("authorization", "Bearer 0123456789abcdef-token2")]),
            Some(StatusCode::FORBIDDEN)
        );
        let twice = [
            ("authorization", "Bearer 0123456789abcdef-token"),
            ("authorization", "Bearer 0123456789abcdef-token"),
        ];
        assert_eq!(status(&twice), Some(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn weak_tokens_are_refused_at_configuration() {
        assert!(PurgeAuth::bearer("").is_err());
        assert!(PurgeAuth::bearer("short").is_err());
        assert!(PurgeAuth::bearer("sixteen chars ok").is_err(), "a space");
        assert!(PurgeAuth::bearer("0123456789abcdef").is_ok());
        assert!(!format!("{:?}", PurgeAuth::bearer("0123456789abcdef").unwrap()).contains("0123"));
    }

    #[test]
    fn targets_and_tags_parse_and_bad_ones_are_refused() {
        let q = TargetFrom::Query;
        let host = [("host", "shop.test")];
        assert_eq!(
            parse(
                &head("POST", "/admin/purge?url=%2Fproducts%2F7%3Fpage%3D2", &host),
                q
            ),
            Ok(Purge::Url(
                "http://shop.test/products/7?page=2".parse().unwrap()
            ))
        );
        assert_eq!(
            parse(&head("POST", "/p?url=https://other.test/a", &host), q),
            Ok(Purge::Url("https://other.test/a".parse().unwrap()))
        );
        assert_eq!(
            parse(
                &head(
                    "POST",
                    "/p",
                    &[("surrogate-key", "product:7  product-lists,product:7")]
                ),
                q
            ),
            Ok(Purge::Tags(vec![
                "product:7".into(),
                "product-lists".into()
            ]))
        );
        assert_eq!(
            parse(
                &head("PURGE", "/products/7?x=1", &host),
                TargetFrom::RequestTarget
            ),
            Ok(Purge::Url(
                "http://shop.test/products/7?x=1".parse().unwrap()
            ))
        );
        for bad in [
            head("POST", "/p", &host),
            head("POST", "/p?url=", &host),
            head("POST", "/p?url=relative/path", &host),
            head("POST", "/p?url=/a&url=/b", &host),
            head("POST", "/p?url=/a", &[]),
            head("POST", "/p", &[("surrogate-key", " , ")]),
        ] {
            assert!(parse(&bad, q).is_err(), "{:?}", bad.uri);
        }
        let many = (0..=MAX_PURGE_TAGS)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(parse(&head("POST", "/p", &[("surrogate-key", &many)]), q).is_err());
        let long = format!("/p?url=/{}", "a".repeat(MAX_PURGE_TARGET + 1));
        assert!(parse(&head("POST", &long, &host), q).is_err());
    }
}

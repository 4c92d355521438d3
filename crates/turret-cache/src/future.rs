//! [`ResponseFuture`] and the decisions of one request: hit, miss, fill, invalidate.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    CachedResponse, ResponseBody, StorageError, StorageFuture, Variants,
    body::collect,
    cache_control::{CacheControl, Delta},
    freshness::{self, AgeValue},
    key,
    layer::Config,
};

/// RFC 9211 `Cache-Status`.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The de-facto `X-Cache: HIT|MISS`.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The cache's identifier in `Cache-Status`.
const CACHE_NAME: &str = "turret";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub(crate) fn count(outcome: &'static str) {
    metrics::counter!("turret_cache_requests_total", "outcome" => outcome).increment(1);
}

/// What to invalidate after a successful unsafe request (RFC 9111 §4.4).
pub(crate) struct Invalidate {
    pub(crate) config: Arc<Config>,
    pub(crate) key: String,
    pub(crate) origin: (String, String),
}

pin_project! {
    /// The response future of [`ResponseCache`](crate::ResponseCache).
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        // A hit: answered without calling the inner service.
        Ready {
            res: Option<Response<ResponseBody<B>>>,
        },
        // Passed to the inner service; its response is annotated and, after an unsafe
        // method, the target invalidated.
        Forward {
            #[pin]
            fut: F,
            member: &'static str,
            invalidate: Option<Invalidate>,
        },
        Invalidating {
            pending: Vec<StorageFuture<()>>,
            res: Option<Response<ResponseBody<B>>>,
        },
        // A miss (inner call, buffering, store) or an asynchronous storage look-up.
        Boxed {
            fut: BoxFuture<Result<Response<ResponseBody<B>>, E>>,
        },
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Ready { .. } => "Ready",
            Kind::Forward { .. } => "Forward",
            Kind::Invalidating { .. } => "Invalidating",
            Kind::Boxed { .. } => "Boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    fn ready(res: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
        }
    }

    pub(crate) fn forward(fut: F, member: &'static str, invalidate: Option<Invalidate>) -> Self {
        Self {
            kind: Kind::Forward {
                fut,
                member,
                invalidate,
            },
        }
    }

    fn boxed(fut: BoxFuture<Result<Response<ResponseBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Boxed { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Ready { res } => {
                    return match res.take() {
                        Some(res) => Poll::Ready(Ok(res)),
                        None => panic!("ResponseFuture polled after completion"),
                    };
                }
                KindProj::Boxed { fut } => return fut.as_mut().poll(cx),
                KindProj::Forward {
                    fut,
                    member,
                    invalidate,
                } => {
                    let mut res = ready!(fut.poll(cx))?.map(ResponseBody::inner);
                    annotate(&mut res, member, "MISS");
                    let status = res.status();
                    match invalidate.take() {
                        Some(inv) if status.is_success() || status.is_redirection() => {
                            let pending = invalidations(&inv, res.headers());
                            Kind::Invalidating {
                                pending,
                                res: Some(res),
                            }
                        }
                        _ => Kind::Ready { res: Some(res) },
                    }
                }
                KindProj::Invalidating { pending, res } => {
                    let mut i = 0;
                    while i < pending.len() {
                        match Pin::new(&mut pending[i]).poll(cx) {
                            Poll::Pending => i += 1,
                            Poll::Ready(result) => {
                                if let Err(e) = result {
                                    storage_error("invalidate", &e);
                                }
                                drop(pending.swap_remove(i));
                            }
                        }
                    }
                    if !pending.is_empty() {
                        return Poll::Pending;
                    }
                    Kind::Ready { res: res.take() }
                }
            };
            self.as_mut().project().kind.set(next);
        }
    }
}

/// Starts invalidating the target URI and same-origin `Location` / `Content-Location`.
fn invalidations(inv: &Invalidate, headers: &HeaderMap) -> Vec<StorageFuture<()>> {
    let origin = (inv.origin.0.as_str(), inv.origin.1.as_str());
    let mut keys = vec![inv.key.clone()];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let location = headers.get(&name).and_then(|v| v.to_str().ok());
        if let Some(k) = location.and_then(|l| key::same_origin_key(origin, l))
            && !keys.contains(&k)
        {
            keys.push(k);
        }
    }
    tracing::debug!(
        ?keys,
        "invalidating after an unsafe request (RFC 9111 §4.4)"
    );
    metrics::counter!("turret_cache_invalidations_total").increment(keys.len() as u64);
    keys.iter()
        .map(|k| inv.config.storage.invalidate(k, crate::Purge::Remove))
        .collect()
}

fn storage_error(op: &'static str, e: &StorageError) {
    tracing::warn!(op, error = %e, "cache storage error; treated as a miss");
    metrics::counter!("turret_cache_backend_errors_total", "op" => op).increment(1);
}

/// Appends this cache's member to `Cache-Status` (RFC 9211 §2: keep the upstream members)
/// and sets `X-Cache`.
fn annotate<B>(res: &mut Response<B>, member: &str, x_cache: &'static str) {
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::try_from(format!("{CACHE_NAME}; {member}")) {
        headers.append(CACHE_STATUS, v);
    }
    headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
}

enum Lookup {
    Hit(Arc<CachedResponse>, Duration),
    Miss(&'static str),
}

/// RFC 9111 §4: among the stored responses whose Vary secondary key matches, the newest;
/// a hit only while it is fresh (no stale serving yet).
///
/// The request's `max-age` and `min-fresh` (RFC 9111 §5.2.1.1, §5.2.1.3) narrow what is
/// fresh enough; invalid values are ignored (request directives are advisory).
fn select(
    result: Result<Variants, StorageError>,
    req: &HeaderMap,
    directives: &CacheControl,
    now: Duration,
) -> Lookup {
    let variants = match result {
        Ok(v) => v,
        Err(e) => {
            storage_error("get", &e);
            return Lookup::Miss("fwd=miss");
        }
    };
    let best = variants
        .iter()
        .filter(|v| v.matches(req))
        .max_by_key(|v| v.response_time());
    match best {
        None if variants.is_empty() => Lookup::Miss("fwd=miss"),
        None => Lookup::Miss("fwd=vary-miss"),
        Some(entry) => match entry.ttl(now) {
            None => Lookup::Miss("fwd=stale"),
            Some(ttl) => {
                let too_old = matches!(directives.max_age, Delta::Seconds(max) if entry.age(now).as_secs() > max);
                let too_close =
                    matches!(directives.min_fresh, Delta::Seconds(min) if ttl.as_secs() < min);
                if too_old || too_close {
                    Lookup::Miss("fwd=request")
                } else {
                    Lookup::Hit(entry.clone(), ttl)
                }
            }
        },
    }
}

/// A response built from storage: stored fields, `Age` (RFC 9111 §4.2.3, on every reuse;
/// `Date` is never rewritten), no body for HEAD.
fn from_storage<B: Body>(
    entry: &CachedResponse,
    now: Duration,
    head: bool,
) -> Response<ResponseBody<B>> {
    let body = if head {
        ResponseBody::full(Bytes::new())
    } else {
        ResponseBody::full(entry.body().clone())
    };
    let mut res = Response::new(body);
    *res.status_mut() = entry.status();
    *res.headers_mut() = entry.headers().clone();
    let headers = res.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    if head && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(entry.body().len()),
        );
    }
    res
}

fn hit<B: Body>(
    entry: &CachedResponse,
    ttl: Duration,
    now: Duration,
    head: bool,
) -> Response<ResponseBody<B>> {
    count("hit");
    let mut res = from_storage(entry, now, head);
    annotate(&mut res, &format!("hit; ttl={}", ttl.as_secs()), "HIT");
    res
}

/// RFC 9111 §5.2.1.7: `only-if-cached` and nothing stored fits. A locally generated error,
/// so no `Cache-Status` (RFC 9211 §2).
fn gateway_timeout<B: Body>() -> Response<ResponseBody<B>> {
    count("only-if-cached");
    let mut res = Response::new(ResponseBody::full(Bytes::new()));
    *res.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
    res
}

/// GET/HEAD: look the key up, answer a fresh hit at once, otherwise forward.
pub(crate) fn lookup<S, ReqBody, B>(
    config: Arc<Config>,
    inner: S,
    req: Request<ReqBody>,
    key: String,
    directives: CacheControl,
) -> ResponseFuture<S::Future, B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    let head = req.method() == Method::HEAD;
    let mut pending = config.storage.get(&key);
    match pending.take_ready() {
        // The memory storage: decided here, no allocation on a hit.
        Some(result) => {
            let now = config.clock.now();
            match select(result, req.headers(), &directives, now) {
                Lookup::Hit(entry, ttl) => {
                    tracing::debug!(%key, "cache hit");
                    ResponseFuture::ready(hit(&entry, ttl, now, head))
                }
                Lookup::Miss(_) if directives.only_if_cached => {
                    ResponseFuture::ready(gateway_timeout())
                }
                Lookup::Miss(member) => {
                    tracing::debug!(%key, member, "cache miss");
                    miss(config, inner, req, key, member)
                }
            }
        }
        None => ResponseFuture::boxed(Box::pin(async move {
            let result = pending.await;
            let now = config.clock.now();
            match select(result, req.headers(), &directives, now) {
                Lookup::Hit(entry, ttl) => Ok(hit(&entry, ttl, now, head)),
                Lookup::Miss(_) if directives.only_if_cached => Ok(gateway_timeout()),
                Lookup::Miss(member) => {
                    let mut inner = inner;
                    if head {
                        count("miss");
                        let mut res = inner.call(req).await?.map(ResponseBody::inner);
                        annotate(&mut res, member, "MISS");
                        return Ok(res);
                    }
                    fill_shared(config, inner, req, key, member).await
                }
            }
        })),
    }
}

/// Forwards a GET (filling the cache, coalesced) or a HEAD (never fills: no body).
pub(crate) fn miss<S, ReqBody, B>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
    key: String,
    member: &'static str,
) -> ResponseFuture<S::Future, B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    if req.method() == Method::HEAD {
        count("miss");
        return ResponseFuture::forward(inner.call(req), member, None);
    }
    ResponseFuture::boxed(Box::pin(fill_shared(config, inner, req, key, member)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Filled<B, E> = (
    Option<Arc<CachedResponse>>,
    Result<Response<ResponseBody<B>>, E>,
);

/// Where the leader's fill leaves its own response.
type Slot<B, E> = Arc<Mutex<Option<Filled<B, E>>>>;

/// A GET miss: with coalescing, the first request for `key` calls the inner service (on a
/// spawned task) and the others wait for it. A waiter reuses what it stored when its Vary
/// key matches; otherwise (nothing stored, an error, another variant) it is released at once
/// and makes its own call.
async fn fill_shared<S, ReqBody, B>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
    key: String,
    member: &'static str,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    count("miss");
    let Some(flights) = config.flights.clone() else {
        let headers = req.headers().clone();
        let filled = fill(config, &key, headers, inner.call(req)).await;
        return finish(filled, member);
    };
    let out: Slot<B, S::Error> = Arc::new(Mutex::new(None));
    let mut own = Some((inner, req));
    let shared = flights
        .call(key.clone(), || {
            let started = own.take().map(|(mut inner, req)| {
                let headers = req.headers().clone();
                (headers, inner.call(req))
            });
            let (config, key, out) = (config.clone(), key.clone(), out.clone());
            async move {
                let Some((headers, fut)) = started else {
                    return Ok(None);
                };
                let filled = fill(config, &key, headers, fut).await;
                let entry = filled.0.clone();
                *lock(&out) = Some(filled);
                Ok(entry)
            }
        })
        .await;
    match own {
        // This request led the flight: its own response (with any fields not stored).
        None => {
            let filled = lock(&out).take();
            match (filled, shared) {
                (Some(filled), Ok(_)) => finish(filled, member),
                (_, Err(e)) => std::panic::resume_unwind(Box::new(format!(
                    "the inner service of the response cache failed: {e}"
                ))),
                (None, Ok(_)) => std::panic::resume_unwind(Box::new(
                    "the response cache's fill ended without a response",
                )),
            }
        }
        Some((mut inner, req)) => {
            let now = config.clock.now();
            if let Ok(Some(entry)) = &shared
                && entry.matches(req.headers())
                && entry.ttl(now).is_some()
            {
                count("collapsed");
                tracing::debug!(%key, "served from a coalesced fill");
                let mut res = from_storage(entry, now, false);
                annotate(&mut res, &format!("{member}; collapsed"), "MISS");
                return Ok(res);
            }
            let headers = req.headers().clone();
            let filled = fill(config, &key, headers, inner.call(req)).await;
            finish(filled, member)
        }
    }
}

fn finish<B: Body, E>(
    filled: Filled<B, E>,
    member: &'static str,
) -> Result<Response<ResponseBody<B>>, E> {
    let (entry, res) = filled;
    let mut res = res?;
    if entry.is_some() {
        annotate(&mut res, &format!("{member}; stored"), "MISS");
    } else {
        annotate(&mut res, member, "MISS");
    }
    Ok(res)
}

/// Calls the inner service and stores its response when RFC 9111 §3 allows, it is fresh on
/// arrival, and its body's exact size is known and within the limit. Anything else streams
/// through untouched.
async fn fill<F, B, E>(
    config: Arc<Config>,
    key: &str,
    request_headers: HeaderMap,
    fut: F,
) -> Filled<B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    let request_time = config.clock.now();
    let res = match fut.await {
        Ok(res) => res,
        Err(e) => return (None, Err(e)),
    };
    let response_time = config.clock.now();
    let pass = |res: Response<B>, why: &str| {
        tracing::debug!(%key, why, "response not stored");
        (None, Ok(res.map(ResponseBody::inner)))
    };
    let cc = CacheControl::from_headers(res.headers());
    let authorization = request_headers.contains_key(header::AUTHORIZATION);
    let lifetime = match freshness::storable(
        &Method::GET,
        authorization,
        res.status(),
        res.headers(),
        &cc,
        &config.rules,
        response_time,
    ) {
        Ok(lifetime) => lifetime,
        Err(why) => return pass(res, why.as_str()),
    };
    let age_value = match freshness::age_value(res.headers()) {
        AgeValue::Absent => 0,
        AgeValue::Seconds(age) => age,
        AgeValue::Invalid => return pass(res, "invalid-age"),
    };
    let date = freshness::date_or(res.headers(), response_time);
    let initial_age =
        freshness::current_age(age_value, date, request_time, response_time, response_time);
    if initial_age >= lifetime {
        return pass(res, "stale-on-arrival");
    }
    match res.body().size_hint().exact() {
        Some(size) if size <= config.max_entry_size => {}
        Some(_) => return pass(res, "too-large"),
        None => return pass(res, "unknown-size"),
    }
    let (parts, body) = res.into_parts();
    let collected = collect(body).await;
    let Some(bytes) = collected.storable_bytes() else {
        tracing::debug!(%key, "response not stored: body error or trailers");
        return (None, Ok(Response::from_parts(parts, collected.into_body())));
    };
    let entry = Arc::new(CachedResponse::new(
        parts.status,
        stored_headers(&parts.headers, &cc),
        bytes,
        &request_headers,
        request_time,
        response_time,
        lifetime,
        initial_age,
    ));
    let stored = match config
        .storage
        .put(key, entry.clone(), lifetime - initial_age)
        .await
    {
        Ok(()) => {
            tracing::debug!(%key, ?lifetime, "response stored");
            metrics::counter!("turret_cache_stored_bytes_total")
                .increment(entry.body().len() as u64);
            Some(entry)
        }
        Err(e) => {
            storage_error("put", &e);
            None
        }
    };
    (
        stored,
        Ok(Response::from_parts(parts, collected.into_body())),
    )
}

/// The fields kept in storage: all but `Connection` and the fields it lists, the proxy
/// authentication fields (RFC 9111 §3.1), and those named by a qualified `private` or
/// `no-cache` (RFC 9111 §5.2.2.4, §5.2.2.7).
fn stored_headers(headers: &HeaderMap, cc: &CacheControl) -> HeaderMap {
    let mut out = headers.clone();
    for value in headers.get_all(header::CONNECTION) {
        for name in value.as_bytes().split(|&b| b == b',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim_ascii()) {
                out.remove(name);
            }
        }
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("proxy-authentication-info"),
    ] {
        out.remove(name);
    }
    for field in cc.private.fields().iter().chain(cc.no_cache.fields()) {
        if let Ok(name) = HeaderName::from_bytes(field.as_bytes()) {
            out.remove(name);
        }
    }
    out
}

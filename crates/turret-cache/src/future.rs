//! [`ResponseFuture`] and the decisions of one request: hit, stale, revalidate, miss, fill,
//! invalidate.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    CachedResponse, Policy, Purge, ResponseBody, SetCookie, StorageError, StorageFuture, Variants,
    body::collect,
    cache_control::{CacheControl, Delta},
    freshness::{self, AgeValue, StoreRules},
    key,
    layer::Shared,
    lease::LeaseOutcome,
    policy::Outcome,
    validate,
};

use crate::entry::{CACHE_STATUS, X_CACHE};
/// The cache's identifier in `Cache-Status`.
const CACHE_NAME: &str = "turret";

/// The field that makes a stored entry a hit-for-miss marker: "this URL answered
/// uncacheably" (its value says why). Never sent: markers are never served, and the field is
/// removed from origin responses before they are stored, so an origin cannot forge one.
pub(crate) const HIT_FOR_MISS: HeaderName = HeaderName::from_static("turret-hit-for-miss");

/// Whether a stored entry is a hit-for-miss marker (an empty body is checked first: it is
/// free, and real entries almost always have a body).
fn is_marker(entry: &CachedResponse) -> bool {
    entry.body().is_empty() && entry.headers().contains_key(HIT_FOR_MISS)
}

/// The `Cache-Status` member of a request sent on by a hit-for-miss marker.
const PASS_MEMBER: &str = "fwd=miss; detail=hit-for-miss";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What one GET or HEAD needs for its decisions.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) key: String,
    /// The request's `Cache-Control`.
    pub(crate) directives: CacheControl,
    pub(crate) head: bool,
}

/// What to invalidate after a successful unsafe request (RFC 9111 §4.4, and the layer's
/// write rules).
pub(crate) struct Invalidate {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: Option<String>,
    pub(crate) origin: (String, String),
    pub(crate) tags: Vec<String>,
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
            shared: Arc<Shared>,
            invalidate: Option<Invalidate>,
        },
        Invalidating {
            pending: Vec<StorageFuture<()>>,
            res: Option<Response<ResponseBody<B>>>,
            shared: Arc<Shared>,
        },
        // Anything that waits for storage or fills it.
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

    pub(crate) fn forward(
        fut: F,
        member: &'static str,
        shared: Arc<Shared>,
        invalidate: Option<Invalidate>,
    ) -> Self {
        Self {
            kind: Kind::Forward {
                fut,
                member,
                shared,
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
                    shared,
                    invalidate,
                } => {
                    let mut res = ready!(fut.poll(cx))?.map(ResponseBody::inner);
                    annotate(shared, &mut res, member, "MISS");
                    let status = res.status();
                    match invalidate.take() {
                        Some(inv) if status.is_success() || status.is_redirection() => {
                            let pending = invalidations(&inv, res.headers());
                            Kind::Invalidating {
                                pending,
                                res: Some(res),
                                shared: inv.shared,
                            }
                        }
                        _ => Kind::Ready { res: Some(res) },
                    }
                }
                KindProj::Invalidating {
                    pending,
                    res,
                    shared,
                } => {
                    let mut i = 0;
                    while i < pending.len() {
                        match Pin::new(&mut pending[i]).poll(cx) {
                            Poll::Pending => i += 1,
                            Poll::Ready(result) => {
                                if let Err(e) = result {
                                    shared.storage_error("invalidate", &e);
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

/// Starts invalidating the target URI, same-origin `Location` / `Content-Location`, and the
/// tags of the layer's write rules.
fn invalidations(inv: &Invalidate, headers: &HeaderMap) -> Vec<StorageFuture<()>> {
    let policies = &inv.shared.policies;
    let origin = (inv.origin.0.as_str(), inv.origin.1.as_str());
    let mut keys: Vec<String> = inv.key.iter().cloned().collect();
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let location = headers.get(&name).and_then(|v| v.to_str().ok());
        if let Some(target) = location.and_then(|l| key::same_origin_target(origin, l)) {
            let policy = policies.for_path(target.path());
            if let Some(k) = policies.key(policy, &target, &HeaderMap::new())
                && !keys.contains(&k)
            {
                keys.push(k);
            }
        }
    }
    tracing::debug!(
        ?keys,
        tags = ?inv.tags,
        "invalidating after an unsafe request (RFC 9111 §4.4)"
    );
    metrics::counter!("turret_cache_invalidations_total").increment(keys.len() as u64);
    let storage = &inv.shared.storage;
    keys.iter()
        .map(|k| storage.invalidate(k, Purge::Remove))
        .chain(
            inv.tags
                .iter()
                .map(|t| storage.invalidate_tag(t, Purge::Remove)),
        )
        .collect()
}

/// Appends this cache's member to `Cache-Status` (RFC 9211 §2: keep the upstream members)
/// and sets `X-Cache`; removes the tag fields unless they are exposed (every response that
/// leaves the layer goes through here, or is built from storage, which never holds them).
fn annotate<B>(shared: &Shared, res: &mut Response<B>, member: &str, x_cache: &'static str) {
    let headers = res.headers_mut();
    if !shared.expose_tags {
        for name in &shared.tag_fields {
            headers.remove(name);
        }
    }
    let mut value = Vec::with_capacity(CACHE_NAME.len() + 2 + member.len());
    value.extend_from_slice(CACHE_NAME.as_bytes());
    value.extend_from_slice(b"; ");
    value.extend_from_slice(member.as_bytes());
    // One allocation: the buffer becomes the value.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.append(CACHE_STATUS, v);
    }
    headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
}

/// The outcome of a storage look-up.
enum Lookup {
    Fresh(Arc<CachedResponse>, Duration),
    /// Stored, but stale or too old for the request: serve stale if allowed, else
    /// revalidate.
    Stale(Arc<CachedResponse>, &'static str),
    Miss(&'static str),
    /// No stored response fits, and a hit-for-miss marker says the URL answered
    /// uncacheably: straight to the origin, without coalescing or the fill lease.
    Pass,
}

/// RFC 9111 §4: among the stored responses whose Vary secondary key matches, the newest.
/// The request's `max-age` and `min-fresh` (§5.2.1.1, §5.2.1.3) narrow what is fresh enough;
/// invalid values are ignored (request directives are advisory). A request `no-cache`
/// (`force`) makes any match need validation. A fresh hit-for-miss marker applies when no
/// stored response matches, or only a stale one older than the marker. `remote`: the answer
/// came from the storage asynchronously (see [`Shared::storage_ok`]).
fn select(
    shared: &Shared,
    result: Result<Variants, StorageError>,
    remote: bool,
    req: &HeaderMap,
    directives: &CacheControl,
    force: bool,
    now: Duration,
) -> Lookup {
    let variants = match result {
        Ok(v) => {
            if remote {
                shared.storage_ok();
            }
            v
        }
        Err(e) => {
            shared.storage_error("get", &e);
            return Lookup::Miss("fwd=miss");
        }
    };
    let mut best: Option<&Arc<CachedResponse>> = None;
    let mut marker: Option<&Arc<CachedResponse>> = None;
    let mut any_response = false;
    for v in variants.iter() {
        let is_marker = is_marker(v);
        any_response |= !is_marker;
        if !v.matches(req) {
            continue;
        }
        let slot = if is_marker { &mut marker } else { &mut best };
        // The newest; the last of equals, as `max_by_key` would.
        if slot.is_none_or(|b| v.response_time() >= b.response_time()) {
            *slot = Some(v);
        }
    }
    let marker = marker.filter(|m| m.ttl(now).is_some());
    match best {
        None if marker.is_some() => Lookup::Pass,
        None if !any_response => Lookup::Miss("fwd=miss"),
        None => Lookup::Miss("fwd=vary-miss"),
        Some(entry) => match entry.ttl(now) {
            None if marker.is_some_and(|m| m.response_time() >= entry.response_time()) => {
                Lookup::Pass
            }
            None => Lookup::Stale(entry.clone(), "fwd=stale"),
            Some(_) if force => Lookup::Stale(entry.clone(), "fwd=request"),
            Some(ttl) => {
                let too_old = matches!(directives.max_age, Delta::Seconds(max) if entry.age(now).as_secs() > max);
                let too_close =
                    matches!(directives.min_fresh, Delta::Seconds(min) if ttl.as_secs() < min);
                if too_old || too_close {
                    Lookup::Stale(entry.clone(), "fwd=request")
                } else {
                    Lookup::Fresh(entry.clone(), ttl)
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
    // Room for Age, Cache-Status and X-Cache without growing the map.
    let stored = entry.headers();
    let headers = res.headers_mut();
    headers.reserve(stored.len() + 4);
    for (name, value) in stored {
        headers.append(name, value.clone());
    }
    headers.insert(header::AGE, age_value(entry.age(now).as_secs()));
    if head && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(entry.body().len()),
        );
    }
    res
}

/// An `Age` value; the first hour's are static (no allocation on a hit).
fn age_value(secs: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| (0..3600u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| small.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// A stored response for this request: a 304 when the client's `If-None-Match` /
/// `If-Modified-Since` says its copy is current (RFC 9110 §13.2.2), the full response
/// otherwise.
fn reuse<B: Body>(
    entry: &CachedResponse,
    now: Duration,
    head: bool,
    request: &HeaderMap,
) -> Response<ResponseBody<B>> {
    if entry.status() == StatusCode::OK
        && validate::is_conditional(request)
        && validate::client_copy_is_current(entry.headers(), request)
    {
        let mut res = Response::new(ResponseBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.headers_mut() = validate::not_modified_headers(entry.headers());
        res.headers_mut()
            .insert(header::AGE, age_value(entry.age(now).as_secs()));
        if head {
            // RFC 9110 §8.6: a 304 to HEAD may carry the 200's length; without it a server
            // may frame the empty 304 as `Content-Length: 0`, which would be false.
            let length = entry
                .headers()
                .get(header::CONTENT_LENGTH)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from(entry.body().len()));
            res.headers_mut().insert(header::CONTENT_LENGTH, length);
        }
        return res;
    }
    from_storage(entry, now, head)
}

fn hit<B: Body>(
    policy: &Policy,
    key: &str,
    head: bool,
    entry: &CachedResponse,
    ttl: Duration,
    now: Duration,
    request: &HeaderMap,
) -> Response<ResponseBody<B>> {
    policy.count(Outcome::Hit);
    tracing::debug!(%key, "cache hit");
    let conditional = entry.status() == StatusCode::OK && validate::is_conditional(request);
    if !head && !conditional && !entry.headers().contains_key(CACHE_STATUS) {
        // The common hit: the prepared fields, three values replaced in place.
        let mut res = Response::new(ResponseBody::full(entry.body().clone()));
        *res.status_mut() = entry.status();
        *res.headers_mut() = entry.hit_headers().clone();
        let headers = res.headers_mut();
        headers.insert(header::AGE, age_value(entry.age(now).as_secs()));
        headers.insert(CACHE_STATUS, hit_status(ttl.as_secs()));
        return res;
    }
    let mut res = reuse(entry, now, head, request);
    res.headers_mut()
        .append(CACHE_STATUS, hit_status(ttl.as_secs()));
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static("HIT"));
    res
}

/// `turret; hit; ttl=N`; the first hour's values are made once each and shared.
fn hit_status(ttl: u64) -> HeaderValue {
    const SHARED: usize = 3600;
    static VALUES: std::sync::OnceLock<Vec<std::sync::OnceLock<HeaderValue>>> =
        std::sync::OnceLock::new();
    let make = |ttl: u64| {
        let mut value = Vec::with_capacity(24);
        value.extend_from_slice(b"turret; hit; ttl=");
        push_digits(&mut value, ttl);
        HeaderValue::from_maybe_shared(Bytes::from(value))
            .unwrap_or_else(|_| HeaderValue::from_static("turret; hit"))
    };
    match usize::try_from(ttl) {
        Ok(i) if i < SHARED => {
            let values =
                VALUES.get_or_init(|| (0..SHARED).map(|_| std::sync::OnceLock::new()).collect());
            values[i].get_or_init(|| make(ttl)).clone()
        }
        _ => make(ttl),
    }
}

/// Appends `n` in decimal, without allocating.
fn push_digits(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_u64(out: &mut String, n: u64) {
    use std::fmt::Write as _;
    let _ = write!(out, "{n}");
}

/// How long past its freshness a stored response is at `now`.
fn staleness(entry: &CachedResponse, now: Duration) -> Duration {
    entry.age(now).saturating_sub(entry.freshness_lifetime())
}

/// A stale response served without the origin (RFC 9111 §4.2.4).
fn serve_stale<B: Body>(
    ctx: &Ctx,
    entry: &CachedResponse,
    now: Duration,
    request: &HeaderMap,
    detail: &str,
) -> Response<ResponseBody<B>> {
    ctx.policy.count(Outcome::Stale);
    tracing::debug!(key = %ctx.key, detail, "serving stale");
    let mut res = reuse(entry, now, ctx.head, request);
    let member = format!("{detail}; ttl=-{}", staleness(entry, now).as_secs());
    annotate(&ctx.shared, &mut res, &member, "STALE");
    res
}

/// RFC 9111 §5.2.1.7: `only-if-cached` and nothing fits, a locally generated 504, so no
/// `Cache-Status` member (RFC 9211 §2).
fn gateway_timeout<B: Body>(ctx: &Ctx) -> Response<ResponseBody<B>> {
    ctx.policy.count(Outcome::OnlyIfCached);
    let mut res = Response::new(ResponseBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    res
}

/// RFC 9111 §5.2.2.2: a stale `must-revalidate` (or `proxy-revalidate`, `s-maxage`)
/// response that the origin could not revalidate: a 504. It is based on the stored
/// response and the request was forwarded, so it carries `fwd=stale` (RFC 9211 §2).
fn cannot_revalidate<B: Body>(ctx: &Ctx) -> Response<ResponseBody<B>> {
    ctx.policy.count(Outcome::MustRevalidate);
    let mut res = Response::new(ResponseBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    annotate(
        &ctx.shared,
        &mut res,
        "fwd=stale; detail=must-revalidate",
        "MISS",
    );
    res
}

/// The directives that govern a response: a valid targeted field (RFC 9213), else
/// `Cache-Control`. `true` when a targeted field was used (then `Expires` is ignored too).
pub(crate) fn response_directives(shared: &Shared, headers: &HeaderMap) -> (CacheControl, bool) {
    for name in &shared.targeted {
        let mut lines = headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            continue;
        }
        let joined: Vec<u8> = lines
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b", "[..]);
        if let Some(cc) = CacheControl::from_targeted(&joined) {
            return (cc, true);
        }
    }
    (CacheControl::from_headers(headers), false)
}

/// The stale-serving windows of a stored response (RFC 5861), zero when it forbids stale
/// serving (RFC 9111 §4.2.4).
struct Windows {
    forbidden: bool,
    while_revalidate: Duration,
    if_error: Duration,
}

fn windows(ctx: &Ctx, headers: &HeaderMap) -> Windows {
    let (cc, _) = response_directives(&ctx.shared, headers);
    let secs = |d: Delta, default: Option<Duration>| match d {
        Delta::Seconds(s) => Duration::from_secs(s),
        Delta::Invalid => Duration::ZERO,
        Delta::Absent => default.unwrap_or_default(),
    };
    let forbidden = cc.forbids_stale();
    let mut if_error = secs(cc.stale_if_error, ctx.policy.stale_if_error);
    // RFC 5861 §4: the request may ask for (or limit) stale-if-error too.
    if let Delta::Seconds(s) = ctx.directives.stale_if_error {
        if_error = Duration::from_secs(s);
    }
    Windows {
        forbidden,
        while_revalidate: if forbidden {
            Duration::ZERO
        } else {
            secs(cc.stale_while_revalidate, ctx.policy.stale_while_revalidate)
        },
        if_error: if forbidden { Duration::ZERO } else { if_error },
    }
}

/// GET/HEAD: look the key up, answer a fresh hit at once, otherwise decide.
/// The look-up's answer: a synchronous storage (memory) has it already and a fresh hit is
/// answered without boxing; otherwise one boxed future waits for it and decides.
pub(crate) fn looked_up<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    req: Request<ReqBody>,
    force: bool,
    mut pending: StorageFuture<Variants>,
) -> ResponseFuture<S::Future, B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    match pending.take_ready() {
        Some(result) => {
            let now = ctx.shared.clock.now();
            let found = select(
                &ctx.shared,
                result,
                false,
                req.headers(),
                &ctx.directives,
                force,
                now,
            );
            ResponseFuture::boxed(Box::pin(decide(ctx, inner, req, found)))
        }
        None => ResponseFuture::boxed(Box::pin(async move {
            let result = pending.await;
            let now = ctx.shared.clock.now();
            let found = select(
                &ctx.shared,
                result,
                true,
                req.headers(),
                &ctx.directives,
                force,
                now,
            );
            decide(ctx, inner, req, found).await
        })),
    }
}

/// The fast path of a synchronous storage: a fresh hit answered inside `call`, with the key
/// still borrowed (no allocation for it). `Err` gives the look-up back for the slow path.
pub(crate) fn fresh_hit<B: Body>(
    shared: &Shared,
    policy: &Policy,
    key: &str,
    head: bool,
    directives: &CacheControl,
    request: &HeaderMap,
    mut pending: StorageFuture<Variants>,
) -> Result<Response<ResponseBody<B>>, StorageFuture<Variants>> {
    let variants = match pending.take_ready() {
        None => return Err(pending),
        Some(Ok(variants)) => variants,
        Some(Err(e)) => return Err(StorageFuture::ready(Err(e))),
    };
    let now = shared.clock.now();
    match select(
        shared,
        Ok(variants.clone()),
        false,
        request,
        directives,
        false,
        now,
    ) {
        Lookup::Fresh(entry, ttl) => Ok(hit(policy, key, head, &entry, ttl, now, request)),
        // Decided again on the slow path (stale, miss).
        _ => Err(StorageFuture::ready(Ok(variants))),
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn hit(res: Response<ResponseBody<B>>) -> Self {
        Self::ready(res)
    }
}

/// After the look-up: a hit, a stale response (served, refreshed in the background, or
/// revalidated), or a miss.
async fn decide<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    req: Request<ReqBody>,
    found: Lookup,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    let now = ctx.shared.clock.now();
    match found {
        Lookup::Fresh(entry, ttl) => Ok(hit(
            &ctx.policy,
            &ctx.key,
            ctx.head,
            &entry,
            ttl,
            now,
            req.headers(),
        )),
        Lookup::Stale(entry, member) => {
            let windows = windows(&ctx, entry.headers());
            let stale_for = staleness(&entry, now);
            // RFC 9111 §5.2.1.2: the client accepts a stale response.
            let client_accepts = match ctx.directives.max_stale {
                Delta::Absent => false,
                Delta::Invalid => true,
                Delta::Seconds(s) => stale_for.as_secs() <= s,
            };
            if entry.ttl(now).is_none() && client_accepts && !windows.forbidden {
                return Ok(serve_stale(&ctx, &entry, now, req.headers(), "hit"));
            }
            if ctx.directives.only_if_cached {
                return Ok(gateway_timeout(&ctx));
            }
            if ctx.head {
                return forward_head(&ctx, inner, req, member, &entry).await;
            }
            // RFC 5861 §3: serve it now, refresh once in the background.
            if entry.ttl(now).is_none()
                && !windows.while_revalidate.is_zero()
                && stale_for <= windows.while_revalidate
                && tokio::runtime::Handle::try_current().is_ok()
            {
                let res = serve_stale(
                    &ctx,
                    &entry,
                    now,
                    req.headers(),
                    "hit; detail=stale-while-revalidate",
                );
                refresh_in_background(ctx, inner, req, entry);
                return Ok(res);
            }
            forward_get(ctx, inner, req, member, Some(entry)).await
        }
        Lookup::Miss(_) | Lookup::Pass if ctx.directives.only_if_cached => {
            Ok(gateway_timeout(&ctx))
        }
        Lookup::Miss(member) if ctx.head => forward_plain(&ctx, inner, req, member).await,
        Lookup::Miss(member) => forward_get(ctx, inner, req, member, None).await,
        Lookup::Pass if ctx.head => forward_plain(&ctx, inner, req, PASS_MEMBER).await,
        Lookup::Pass => forward_pass(ctx, inner, req).await,
    }
}

/// A GET for a URL that answered uncacheably (a fresh hit-for-miss marker): sent on at once
/// with the client's own conditionals (the origin evaluates them), neither coalesced nor
/// behind the fill lease; a response that may be stored now is stored, replacing the marker.
async fn forward_pass<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    ReqBody: Default,
    B: Body,
{
    metrics::counter!("turret_cache_hit_for_miss_total").increment(1);
    tracing::debug!(key = %ctx.key, "hit-for-miss: straight to the origin");
    let client = req.headers().clone();
    let done = exchange(&ctx, inner, req, None, Fill::Pass).await;
    finish(&ctx, done, PASS_MEMBER, None, &client)
}

/// Forwards without storing (a HEAD: no body to store).
async fn forward_plain<S, ReqBody, B>(
    ctx: &Ctx,
    mut inner: S,
    req: Request<ReqBody>,
    member: &'static str,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body,
{
    ctx.policy.count(Outcome::Miss);
    let mut res = inner.call(req).await?.map(ResponseBody::inner);
    annotate(&ctx.shared, &mut res, member, "MISS");
    Ok(res)
}

/// A HEAD for a stale stored GET: forwarded; a 200 whose validators or length differ from the
/// stored response's invalidates it (RFC 9111 §4.3.5: the stored GET is outdated).
async fn forward_head<S, ReqBody, B>(
    ctx: &Ctx,
    inner: S,
    req: Request<ReqBody>,
    member: &'static str,
    stored: &CachedResponse,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body,
{
    let res = forward_plain(ctx, inner, req, member).await?;
    if res.status() == StatusCode::OK {
        let differs = [header::ETAG, header::LAST_MODIFIED, header::CONTENT_LENGTH]
            .iter()
            .any(|name| {
                let new = res.headers().get(name);
                new.is_some() && new != stored.headers().get(name)
            });
        if differs {
            tracing::debug!(key = %ctx.key, "a HEAD shows the stored GET is outdated");
            if let Err(e) = ctx.shared.storage.invalidate(&ctx.key, Purge::Remove).await {
                ctx.shared.storage_error("invalidate", &e);
            }
        }
    }
    Ok(res)
}

/// Removes the key from the set of running refreshes when the refresh ends.
struct Refreshing {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    key: String,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.key);
    }
}

/// Starts the one background revalidation of `key` in this process (and, with a fill
/// lease, in the fleet); nothing when one already runs.
fn refresh_in_background<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    mut req: Request<ReqBody>,
    entry: Arc<CachedResponse>,
) where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    if !lock(&ctx.shared.refreshing).insert(ctx.key.clone()) {
        return;
    }
    let guard = Refreshing {
        set: ctx.shared.refreshing.clone(),
        key: ctx.key.clone(),
    };
    validate::add_validators(req.headers_mut(), entry.headers());
    tokio::spawn(async move {
        let _guard = guard;
        let held = match &ctx.shared.lease {
            Some(lease) => match lease.try_lead(format!("refresh:{}", ctx.key)).await {
                Some(held) => Some(held),
                None => {
                    tracing::debug!(key = %ctx.key, "another instance refreshes this key");
                    return;
                }
            },
            None => None,
        };
        tracing::debug!(key = %ctx.key, "stale-while-revalidate refresh");
        // The outcome is in storage (or logged); nobody waits for the response.
        let _ = exchange(&ctx, inner, req, Some(entry), Fill::Refresh).await;
        drop(held);
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One exchange with the origin: the response for the request that made it, what was
/// stored, and whether it was a revalidation answered with 304.
struct Exchange<B: Body, E> {
    entry: Option<Arc<CachedResponse>>,
    res: Result<Response<ResponseBody<B>>, E>,
    /// `Some(status)` when the origin was asked; `None` when the answer came from what
    /// another instance stored while this one waited for its lease.
    origin_status: Option<StatusCode>,
    /// A 304 updated the stored response.
    revalidated: bool,
    /// The hit-for-miss marker this exchange left (its response may not be stored).
    marker: Option<Arc<CachedResponse>>,
}

/// How an exchange reaches the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// A miss or a revalidation for a client: behind the fleet's fill lease (for a miss),
    /// leaving a hit-for-miss marker when the answer may not be stored.
    Client,
    /// A background refresh: no lease wait (its own lease was taken), a marker when
    /// uncacheable.
    Refresh,
    /// Sent on by a hit-for-miss marker (or released by a fill that left one): no lease,
    /// no new marker.
    Pass,
}

/// Where the leader's exchange leaves its own response.
type Slot<B, E> = Arc<Mutex<Option<Exchange<B, E>>>>;

/// A GET that needs the origin: a miss, or a stale response to revalidate. With
/// coalescing, the first such request for `key` makes the exchange (on a spawned task) and
/// the others wait for it, then reuse what it stored when their Vary key matches; otherwise
/// (nothing stored, an error, another variant) they are released at once and make their own.
async fn forward_get<S, ReqBody, B>(
    ctx: Ctx,
    inner: S,
    mut req: Request<ReqBody>,
    member: &'static str,
    stale: Option<Arc<CachedResponse>>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Send + 'static,
{
    let client = req.headers().clone();
    match &stale {
        Some(entry) if validate::has_validator(entry.headers()) => {
            validate::add_validators(req.headers_mut(), entry.headers());
        }
        _ => validate::strip_client_conditionals(req.headers_mut()),
    }
    let ctx = Arc::new(ctx);
    let Some(flights) = ctx.shared.flights.clone() else {
        let done = exchange(&ctx, inner, req, stale.clone(), Fill::Client).await;
        return finish(&ctx, done, member, stale.as_deref(), &client);
    };
    let out: Slot<B, S::Error> = Arc::new(Mutex::new(None));
    let mut own = Some((inner, req));
    let shared = flights
        .call(ctx.key.clone(), || {
            let started = own.take();
            let (ctx, out, stale) = (ctx.clone(), out.clone(), stale.clone());
            async move {
                let Some((inner, req)) = started else {
                    return Ok(None);
                };
                let done = exchange(&ctx, inner, req, stale, Fill::Client).await;
                // What it stored, or the marker that releases the waiters to the origin.
                let entry = done.entry.clone().or_else(|| done.marker.clone());
                *lock(&out) = Some(done);
                Ok(entry)
            }
        })
        .await;
    match own {
        // This request led the flight: its own response (with any fields not stored).
        None => {
            let done = lock(&out).take();
            match (done, shared) {
                (Some(done), Ok(_)) => finish(&ctx, done, member, stale.as_deref(), &client),
                (_, Err(e)) => std::panic::resume_unwind(Box::new(format!(
                    "the inner service of the response cache failed: {e}"
                ))),
                (None, Ok(_)) => std::panic::resume_unwind(Box::new(
                    "the response cache's fill ended without a response",
                )),
            }
        }
        Some((inner, req)) => {
            let now = ctx.shared.clock.now();
            match &shared {
                // The fill was uncacheable: every waiter goes to the origin at once, in
                // parallel, without taking the fill lease in turn.
                Ok(Some(entry)) if is_marker(entry) => {
                    let done = exchange(&ctx, inner, req, None, Fill::Pass).await;
                    return finish(&ctx, done, PASS_MEMBER, None, &client);
                }
                Ok(Some(entry)) if entry.matches(&client) => {
                    ctx.policy.count(Outcome::Collapsed);
                    tracing::debug!(key = %ctx.key, "served from a coalesced exchange");
                    let mut res = reuse(entry, now, false, &client);
                    annotate(
                        &ctx.shared,
                        &mut res,
                        &format!("{member}; collapsed"),
                        "MISS",
                    );
                    return Ok(res);
                }
                _ => {}
            }
            let done = exchange(&ctx, inner, req, stale.clone(), Fill::Client).await;
            finish(&ctx, done, member, stale.as_deref(), &client)
        }
    }
}

/// The answer to one request from its exchange: stale on error when allowed
/// (RFC 5861 §4), a 504 when a `must-revalidate` response cannot be revalidated
/// (RFC 9111 §5.2.2.2), a 304 when the client's copy is current, else the origin's response.
fn finish<B: Body, E>(
    ctx: &Ctx,
    done: Exchange<B, E>,
    member: &'static str,
    stale: Option<&CachedResponse>,
    client: &HeaderMap,
) -> Result<Response<ResponseBody<B>>, E> {
    let now = ctx.shared.clock.now();
    let failed = match &done.res {
        Err(_) => true,
        Ok(res) => matches!(res.status().as_u16(), 500 | 502 | 503 | 504),
    };
    if failed && let Some(entry) = stale {
        let windows = windows(ctx, entry.headers());
        if !windows.forbidden
            && !windows.if_error.is_zero()
            && staleness(entry, now) <= windows.if_error
        {
            let status = done.res.as_ref().map_or(0, |r| r.status().as_u16());
            let detail = if status == 0 {
                "fwd=stale; detail=stale-if-error".to_owned()
            } else {
                format!("fwd=stale; fwd-status={status}; detail=stale-if-error")
            };
            return Ok(serve_stale(ctx, entry, now, client, &detail));
        }
        if done.res.is_err() && windows.forbidden {
            tracing::debug!(key = %ctx.key, "must-revalidate and the origin failed: 504");
            return Ok(cannot_revalidate(ctx));
        }
    }
    let Exchange {
        entry,
        res,
        origin_status,
        revalidated,
        marker: _,
    } = done;
    let mut res = res?;
    let Some(origin_status) = origin_status else {
        // Filled by another instance while this one waited for the lease: `res` is already
        // the stored response; only a client whose copy is current gets a 304 instead.
        ctx.policy.count(Outcome::Collapsed);
        let mut res = match &entry {
            Some(entry) if validate::is_conditional(client) => reuse(entry, now, false, client),
            _ => res,
        };
        annotate(
            &ctx.shared,
            &mut res,
            &format!("{member}; collapsed"),
            "MISS",
        );
        return Ok(res);
    };
    if let Some(entry) = &entry
        && validate::is_conditional(client)
        && validate::client_copy_is_current(entry.headers(), client)
    {
        res = reuse(entry, now, false, client);
    }
    let mut member = member.to_owned();
    if stale.is_some() {
        member.push_str("; fwd-status=");
        push_u64(&mut member, u64::from(origin_status.as_u16()));
    }
    if entry.is_some() {
        member.push_str("; stored");
    }
    if revalidated {
        ctx.policy.count(Outcome::Revalidated);
        annotate(&ctx.shared, &mut res, &member, "REVALIDATED");
    } else {
        ctx.policy.count(Outcome::Miss);
        annotate(&ctx.shared, &mut res, &member, "MISS");
    }
    Ok(res)
}

/// Calls the origin (after taking the fleet-wide fill lease, when there is one and this is
/// a miss) and stores what RFC 9111 allows: a 304 to a revalidation updates the stored
/// response (§4.3.3, §4.3.4), anything else is stored when §3 allows it.
async fn exchange<S, ReqBody, B>(
    ctx: &Ctx,
    mut inner: S,
    req: Request<ReqBody>,
    stale: Option<Arc<CachedResponse>>,
    fill: Fill,
) -> Exchange<B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    ReqBody: Default,
    B: Body,
{
    let shared = &ctx.shared;
    let mut held = None;
    if fill == Fill::Client
        && stale.is_none()
        && let Some(lease) = &shared.lease
    {
        let deadline = tokio::time::Instant::now() + shared.lease_wait;
        let lease_key = format!("fill:{}", ctx.key);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let outcome = lease.lead_or_wait(lease_key.clone(), left).await;
            let last = match outcome {
                LeaseOutcome::Unavailable => break,
                LeaseOutcome::Lead(guard) => {
                    held = Some(guard);
                    true
                }
                LeaseOutcome::Released => false,
                LeaseOutcome::TimedOut => true,
            };
            // Another instance may have filled meanwhile (before we took the lease, or
            // while we waited): read what it stored.
            let result = shared.storage.get(&ctx.key).await;
            let now = shared.clock.now();
            match select(
                shared,
                result,
                true,
                req.headers(),
                &CacheControl::default(),
                false,
                now,
            ) {
                Lookup::Fresh(entry, _) => {
                    return Exchange {
                        res: Ok(from_storage(&entry, now, false)),
                        entry: Some(entry),
                        origin_status: None,
                        revalidated: false,
                        marker: None,
                    };
                }
                // The holder's answer was uncacheable: no point waiting for the next one.
                Lookup::Pass => break,
                _ if last => break,
                _ => {}
            }
        }
    }
    let failed = |e| Exchange {
        entry: None,
        res: Err(e),
        origin_status: None,
        revalidated: false,
        marker: None,
    };
    let mut request_time = shared.clock.now();
    let mut request_headers = req.headers().clone();
    // A revalidation keeps its head (a GET has no content to consume): a 304 that selects no
    // stored response cannot answer it (RFC 9111 §4.3.4), so it is sent again without the
    // cache's conditions.
    let (parts, body) = req.into_parts();
    let again = stale.as_ref().map(|_| parts.clone());
    let mut res = match inner.call(Request::from_parts(parts, body)).await {
        Ok(res) => res,
        Err(e) => return failed(e),
    };
    if let (Some(stored), Some(mut parts)) = (&stale, again)
        && res.status() == StatusCode::NOT_MODIFIED
        && !validate::selects(stored.headers(), res.headers())
    {
        tracing::debug!(
            key = %ctx.key,
            "a 304 that selects no stored response (RFC 9111 §4.3.4): asking again unconditionally"
        );
        drop(res);
        validate::strip_client_conditionals(&mut parts.headers);
        request_time = shared.clock.now();
        request_headers = parts.headers.clone();
        if let Err(e) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
            return failed(e);
        }
        res = match inner
            .call(Request::from_parts(parts, ReqBody::default()))
            .await
        {
            Ok(res) => res,
            Err(e) => return failed(e),
        };
    }
    let status = res.status();
    let done = match stale {
        Some(stale)
            if status == StatusCode::NOT_MODIFIED
                && validate::selects(stale.headers(), res.headers()) =>
        {
            let (parts, _) = res.into_parts();
            let entry =
                store_revalidated(ctx, &stale, &parts.headers, &request_headers, request_time)
                    .await;
            let now = shared.clock.now();
            let res = from_storage(&entry, now, false);
            Exchange {
                entry: Some(entry),
                res: Ok(res),
                origin_status: Some(status),
                revalidated: true,
                marker: None,
            }
        }
        _ => {
            let (stored, res) = store(ctx, &request_headers, request_time, res, fill).await;
            let (entry, marker) = match stored {
                Stored::Entry(entry) => (Some(entry), None),
                Stored::Marker(marker) => (None, Some(marker)),
                Stored::Nothing => (None, None),
            };
            Exchange {
                entry,
                res: Ok(res),
                origin_status: Some(status),
                revalidated: false,
                marker,
            }
        }
    };
    drop(held);
    done
}

/// The lifetime and backend TTL of a response about to be stored, or why it is not.
struct Admission {
    cc: CacheControl,
    lifetime: Duration,
    initial_age: Duration,
    ttl: Duration,
}

fn rules(ctx: &Ctx) -> StoreRules {
    let mut rules = ctx.shared.rules;
    if ctx.policy.only_headers {
        rules.default_ttl = None;
    } else if let Some(ttl) = ctx.policy.ttl {
        rules.default_ttl = Some(ttl);
    }
    rules
}

/// RFC 9111 §3 and §4.2: may `headers` (with `status`) be stored, for how long, and how
/// long the backend keeps it (freshness left + the stale window: RFC 5861 windows, and the
/// revalidation window when it has a validator).
fn admit(
    ctx: &Ctx,
    status: StatusCode,
    headers: &HeaderMap,
    request_headers: &HeaderMap,
    request_time: Duration,
    response_time: Duration,
) -> Result<Admission, &'static str> {
    let (cc, targeted) = response_directives(&ctx.shared, headers);
    let without_expires;
    let freshness_headers = if targeted && headers.contains_key(header::EXPIRES) {
        // RFC 9213 §2.1: a valid targeted field replaces Cache-Control and Expires.
        let mut h = headers.clone();
        h.remove(header::EXPIRES);
        without_expires = h;
        &without_expires
    } else {
        headers
    };
    let authorization = request_headers.contains_key(header::AUTHORIZATION);
    let lifetime = freshness::storable(
        &Method::GET,
        authorization,
        status,
        freshness_headers,
        &cc,
        &rules(ctx),
        response_time,
    )
    .map_err(|why| why.as_str())?;
    let age_value = match freshness::age_value(headers) {
        AgeValue::Absent => 0,
        AgeValue::Seconds(age) => age,
    };
    let date = freshness::date_or(headers, response_time);
    let initial_age =
        freshness::current_age(age_value, date, request_time, response_time, response_time);
    let windows = windows(ctx, headers);
    let mut keep = windows.while_revalidate.max(windows.if_error);
    if validate::has_validator(headers) {
        keep = keep.max(ctx.shared.keep_for_revalidation);
    }
    let ttl = lifetime.saturating_sub(initial_age).saturating_add(keep);
    if ttl.is_zero() {
        return Err("stale-on-arrival");
    }
    Ok(Admission {
        cc,
        lifetime,
        initial_age,
        ttl,
    })
}

/// The tags of a response: the policy's and those of the tag fields (space- or
/// comma-separated).
fn tags(ctx: &Ctx, headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = ctx.policy.tags.clone();
    for name in &ctx.shared.tag_fields {
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split([' ', ',', '\t']).filter(|t| !t.is_empty()) {
                if !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_owned());
                }
            }
        }
    }
    tags
}

/// Sets `Date` to `at` (since the Unix epoch).
fn insert_date(headers: &mut HeaderMap, at: Duration) {
    let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + at);
    if let Ok(date) = HeaderValue::from_str(&date) {
        headers.insert(header::DATE, date);
    }
}

/// What a fill left in storage.
enum Stored {
    Entry(Arc<CachedResponse>),
    /// The response may not be stored: a hit-for-miss marker was.
    Marker(Arc<CachedResponse>),
    Nothing,
}

/// Stores the response when RFC 9111 §3 allows, and its body's exact size is known and
/// within the limit. Anything else streams through untouched, and leaves a hit-for-miss
/// marker when it is the URL's answer rather than a failure.
async fn store<B: Body>(
    ctx: &Ctx,
    request_headers: &HeaderMap,
    request_time: Duration,
    res: Response<B>,
    fill: Fill,
) -> (Stored, Response<ResponseBody<B>>) {
    let shared = &ctx.shared;
    let key = &ctx.key;
    let response_time = shared.clock.now();
    let (mut parts, body) = res.into_parts();
    let tags = tags(ctx, &parts.headers);
    if !parts.headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a recipient that caches a response without `Date` adds the time
        // it received it, so that every reuse carries when it was made, not when it is sent.
        insert_date(&mut parts.headers, response_time);
    }
    if !shared.expose_tags {
        for name in &shared.tag_fields {
            parts.headers.remove(name);
        }
    }
    let admitted = admit(
        ctx,
        parts.status,
        &parts.headers,
        request_headers,
        request_time,
        response_time,
    )
    .and_then(|admission| match body.size_hint().exact() {
        Some(size) if size <= shared.max_entry_size => Ok(admission),
        Some(_) => Err("too-large"),
        None => Err("unknown-size"),
    });
    let admission = match admitted {
        Ok(admission) => admission,
        Err(why) => {
            tracing::debug!(%key, why, "response not stored");
            let stored = match fill {
                Fill::Pass => Stored::Nothing,
                Fill::Client | Fill::Refresh => {
                    mark_uncacheable(ctx, parts.status, why, tags, request_headers, response_time)
                        .await
                }
            };
            return (
                stored,
                Response::from_parts(parts, ResponseBody::inner(body)),
            );
        }
    };
    let collected = collect(body, shared.max_entry_size).await;
    let Some(bytes) = collected.storable_bytes() else {
        tracing::debug!(%key, "response not stored: body error or trailers");
        return (
            Stored::Nothing,
            Response::from_parts(parts, collected.into_body()),
        );
    };
    let mut stored_headers = stored_headers(&parts.headers, &admission.cc, shared.rules.set_cookie);
    for name in &ctx.policy.key_headers {
        stored_headers.append(
            header::VARY,
            HeaderValue::from_str(name.as_str()).unwrap_or(HeaderValue::from_static("*")),
        );
    }
    let entry = Arc::new(
        CachedResponse::new(
            parts.status,
            stored_headers,
            bytes,
            request_headers,
            request_time,
            response_time,
            admission.lifetime,
            admission.initial_age,
        )
        .with_tags(tags),
    );
    let stored = match put(ctx, entry, admission.ttl).await {
        Some(entry) => Stored::Entry(entry),
        None => Stored::Nothing,
    };
    (stored, Response::from_parts(parts, collected.into_body()))
}

/// Leaves a hit-for-miss marker for the URL (no `Vary`: it applies to every request no
/// stored response matches) when `why` is the URL's answer: not for a 5xx, nor for a status
/// that may never be stored (1xx, 206, 304, 429), which say nothing of the next answer.
async fn mark_uncacheable(
    ctx: &Ctx,
    status: StatusCode,
    why: &'static str,
    tags: Vec<String>,
    request_headers: &HeaderMap,
    response_time: Duration,
) -> Stored {
    let lifetime = ctx.shared.hit_for_miss;
    if lifetime.is_zero() || status.is_server_error() || why == "status" || why == "method" {
        return Stored::Nothing;
    }
    let mut headers = HeaderMap::new();
    headers.insert(HIT_FOR_MISS, HeaderValue::from_static(why));
    let marker = Arc::new(
        CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::new(),
            request_headers,
            response_time,
            response_time,
            lifetime,
            Duration::ZERO,
        )
        .with_tags(tags),
    );
    match ctx
        .shared
        .storage
        .put(&ctx.key, marker.clone(), lifetime)
        .await
    {
        Ok(()) => {
            tracing::debug!(key = %ctx.key, why, ?lifetime, "hit-for-miss marker stored");
            Stored::Marker(marker)
        }
        Err(e) => {
            ctx.shared.storage_error("put", &e);
            Stored::Nothing
        }
    }
}

async fn put(ctx: &Ctx, entry: Arc<CachedResponse>, ttl: Duration) -> Option<Arc<CachedResponse>> {
    match ctx.shared.storage.put(&ctx.key, entry.clone(), ttl).await {
        Ok(()) => {
            tracing::debug!(key = %ctx.key, lifetime = ?entry.freshness_lifetime(), ?ttl, "response stored");
            ctx.policy.stored(entry.body().len());
            Some(entry)
        }
        Err(e) => {
            ctx.shared.storage_error("put", &e);
            None
        }
    }
}

/// RFC 9111 §4.3.4: the stored response with the 304's fields, fresh again from the
/// revalidation's times. Kept even when the update cannot be stored (it answers this
/// request: the origin said it is current).
async fn store_revalidated(
    ctx: &Ctx,
    stale: &CachedResponse,
    not_modified: &HeaderMap,
    request_headers: &HeaderMap,
    request_time: Duration,
) -> Arc<CachedResponse> {
    let response_time = ctx.shared.clock.now();
    let mut headers = validate::updated_headers(stale.headers(), not_modified);
    if !not_modified.contains_key(header::DATE) {
        // RFC 9110 §6.6.1, as for a fill: the 304 was made when it was received.
        insert_date(&mut headers, response_time);
    }
    // The merged fields obey the storing rules like a fill's (§3.1): no Connection-listed or
    // proxy-authentication fields, none named by a qualified private / no-cache, and no
    // Set-Cookie unless stored without it — otherwise one client's fields reach others.
    let (cc, _) = response_directives(&ctx.shared, &headers);
    headers = stored_headers(&headers, &cc, ctx.shared.rules.set_cookie);
    if !ctx.shared.expose_tags {
        for name in &ctx.shared.tag_fields {
            headers.remove(name);
        }
    }
    match admit(
        ctx,
        stale.status(),
        &headers,
        request_headers,
        request_time,
        response_time,
    ) {
        Ok(a) => {
            let entry = Arc::new(stale.revalidated(
                headers,
                request_time,
                response_time,
                a.lifetime,
                a.initial_age,
            ));
            put(ctx, entry.clone(), a.ttl).await;
            entry
        }
        Err(why) => {
            tracing::debug!(key = %ctx.key, why, "revalidated response no longer storable");
            if let Err(e) = ctx.shared.storage.invalidate(&ctx.key, Purge::Remove).await {
                ctx.shared.storage_error("invalidate", &e);
            }
            Arc::new(stale.revalidated(
                headers,
                request_time,
                response_time,
                Duration::ZERO,
                Duration::ZERO,
            ))
        }
    }
}

/// The fields kept in storage: all but `Connection` and the fields it lists, the proxy
/// authentication fields (RFC 9111 §3.1), those named by a qualified `private` or
/// `no-cache` (RFC 9111 §5.2.2.4, §5.2.2.7), and `Set-Cookie` when stored without it.
fn stored_headers(headers: &HeaderMap, cc: &CacheControl, set_cookie: SetCookie) -> HeaderMap {
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
        HIT_FOR_MISS,
    ] {
        out.remove(name);
    }
    if set_cookie == SetCookie::StoreWithout {
        out.remove(header::SET_COOKIE);
    }
    for field in cc.private.fields().iter().chain(cc.no_cache.fields()) {
        if let Ok(name) = HeaderName::from_bytes(field.as_bytes()) {
            out.remove(name);
        }
    }
    out
}

//! [`ResponseCache`]: the service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use tower_service::Service;

use crate::{
    ResponseBody, ResponseCacheLayer,
    cache_control::{CacheControl, Qualified},
    future::ResponseFuture,
    invalidator::Invalidate,
    key,
    layer::Shared,
    lookup::Ctx,
    miss,
    policy::Outcome,
    respond::{self, FastPath},
    validate,
};

thread_local! {
    /// The key buffer of the hit path (keys are built here, allocated only on a miss).
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A service that answers GET and HEAD from an RFC 9111 shared cache and fills it from
/// `inner`. See [`ResponseCacheLayer`].
///
/// The request body must implement `Default` (axum's `Body`, `Full`, `Empty`, `()` do): a
/// revalidation that the origin answers with a 304 selecting no stored response is sent
/// again without the cache's conditions (RFC 9111 §4.3.4), and a GET has no content, so the
/// second request carries `ReqBody::default()`. With hyper's `Incoming`, wrap it in a body
/// of your own with an empty default (the proxy example does).
#[derive(Clone)]
pub struct ResponseCache<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for ResponseCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> ResponseCache<S> {
    /// A layer with the default configuration ([`ResponseCacheLayer::new`]).
    pub fn layer() -> ResponseCacheLayer {
        ResponseCacheLayer::new()
    }

    turret_body::inner_service_accessors!();

    /// Fills the cache ahead of traffic: sends each request through the cache (as a client
    /// would, so every storing rule applies) and reads the responses to their end. Returns
    /// how many responses were stored or already fresh in the cache.
    pub async fn warm<ReqBody, ResBody, I>(&self, requests: I) -> Result<usize, S::Error>
    where
        I: IntoIterator<Item = Request<ReqBody>>,
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body,
        // Wherever the cache is a service.
        Self: Service<Request<ReqBody>, Response = Response<ResponseBody<ResBody>>, Error = S::Error>
            + Clone,
    {
        let mut warmed = 0;
        for req in requests {
            let mut svc = self.clone();
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
            let res = svc.call(req).await?;
            let status = res
                .headers()
                .get_all("cache-status")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            // Drain the body so that the fill completes; a body error only loses this one.
            let _ = res.into_body().collect().await;
            if status.contains("; hit") || status.contains("; stored") {
                warmed += 1;
            }
        }
        Ok(warmed)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.method();
        let head = method == Method::HEAD;
        // The fast path: a fresh hit is answered here, before anything is cloned (the inner
        // service stays ready for the next call, as tower allows), with the default key
        // built in a reused buffer (a hit never allocates it). Anything else goes on with
        // what was looked up.
        let mut looked_up = None;
        if (method == Method::GET || head) && self.shared.policies.make_key.is_none() {
            let shared = &self.shared;
            let policy = shared.policies.for_path(req.uri().path());
            let directives = CacheControl::from_headers(req.headers());
            // RFC 9111 §5.2.1.4: `no-cache` reuses nothing without validating it first.
            if !policy.bypass
                && !directives.no_store
                && directives.no_cache == Qualified::Absent
                && !validate::has_foreign_precondition(req.headers())
            {
                let fast = KEY.with_borrow_mut(|buf| {
                    buf.clear();
                    key::push_primary_key(buf, req.uri(), req.headers(), &policy.query);
                    let pending = shared.storage.get(buf);
                    match respond::fresh_hit(
                        shared,
                        policy,
                        buf,
                        head,
                        &directives,
                        req.headers(),
                        pending,
                    ) {
                        FastPath::Hit(res) => FastPath::Hit(res),
                        FastPath::Slow(pending) => FastPath::Slow((buf.clone(), pending)),
                    }
                });
                match fast {
                    FastPath::Hit(res) => return ResponseFuture::ready(res),
                    FastPath::Slow(slow) => looked_up = Some((directives, slow)),
                }
            }
        }
        // The clone-and-swap of `tower-service`: `inner` is the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let policy = shared.policies.for_path(req.uri().path()).clone();
        if let Some((directives, (key, pending))) = looked_up {
            let ctx = Ctx {
                head,
                shared,
                policy,
                key,
                directives,
            };
            return miss::looked_up(ctx, inner, req, false, pending);
        }

        if method != Method::GET && method != Method::HEAD {
            // RFC 9111 §4.4: a 2xx/3xx to an unsafe or unknown method invalidates the target.
            let safe = method == Method::OPTIONS || method == Method::TRACE;
            let invalidate = (!safe).then(|| {
                let (scheme, host) = key::origin(req.uri(), req.headers());
                let target = key::absolute(req.uri(), req.headers());
                // The target is absolute now: the default key needs no `Host` (one that
                // disagrees with the target would name its own `#host=` key, not the
                // target's entry); a custom key may read any field.
                let fields = if shared.policies.make_key.is_some() {
                    req.headers()
                } else {
                    &http::HeaderMap::new()
                };
                let key = target.and_then(|t| shared.policies.key(&policy, &t, fields));
                Invalidate {
                    tags: shared.policies.write_tags(req.uri().path()),
                    key,
                    origin: (scheme.to_owned(), host.to_owned()),
                    shared: shared.clone(),
                }
            });
            policy.count(Outcome::Method);
            return ResponseFuture::forward(
                inner.call(req),
                "fwd=method",
                shared.clone(),
                invalidate,
            );
        }
        if policy.bypass {
            policy.count(Outcome::Bypass);
            return ResponseFuture::forward(inner.call(req), "fwd=bypass", shared.clone(), None);
        }
        let directives = CacheControl::from_headers(req.headers());
        if directives.no_store || validate::has_foreign_precondition(req.headers()) {
            // RFC 9111 §5.2.1.5: store nothing of this exchange. Preconditions other than
            // If-None-Match / If-Modified-Since are the origin's to evaluate.
            policy.count(Outcome::Bypass);
            return ResponseFuture::forward(inner.call(req), "fwd=request", shared.clone(), None);
        }
        // RFC 9111 §5.2.1.4: `no-cache` reuses nothing without validating it first.
        let force = directives.no_cache != Qualified::Absent;
        // A custom key, or a request `no-cache` (the fast path took the rest).
        let (key, pending) = {
            let Some(key) = shared.policies.key(&policy, req.uri(), req.headers()) else {
                policy.count(Outcome::Bypass);
                return ResponseFuture::forward(
                    inner.call(req),
                    "fwd=bypass",
                    shared.clone(),
                    None,
                );
            };
            let pending = shared.storage.get(&key);
            (key, pending)
        };
        let ctx = Ctx {
            head,
            shared,
            policy,
            key,
            directives,
        };
        miss::looked_up(ctx, inner, req, force, pending)
    }
}

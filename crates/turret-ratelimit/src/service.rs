use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    Backend, BackendError, Decide, Decision, FailureMode, KeyExtractor, Limited, MissingKeyAction,
    OnLimited, RateLimitLayer, RequestHead, ResponseBody, backend::DecisionFuture, headers,
    layer::Shared,
};

/// The rate-limit middleware: see [`RateLimitLayer`].
pub struct RateLimit<S, K, Bk, L> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<K, Bk, L>>,
}

impl<S: Clone, K, Bk, L> Clone for RateLimit<S, K, Bk, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K, Bk, L> std::fmt::Debug for RateLimit<S, K, Bk, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policies", &self.shared.policies)
            .finish()
    }
}

impl<S, K, Bk, L> RateLimit<S, K, Bk, L> {
    /// Wraps `inner` in the rate limiter configured by `layer`.
    pub fn new(inner: S, layer: &RateLimitLayer<K, Bk, L>) -> Self
    where
        K: Clone,
        Bk: Clone,
        L: Clone,
    {
        tower_layer::Layer::layer(layer, inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, Bk, L> RateLimit<S, K, Bk, L> {
    fn respond<ReqBody>(
        &mut self,
        req: Request<ReqBody>,
        verdict: Verdict,
    ) -> ResponseFuture<S, ReqBody, K, Bk, L>
    where
        S: Service<Request<ReqBody>>,
    {
        match verdict {
            Verdict::Refuse(res) => ResponseFuture::ready(res, self.shared.clone()),
            Verdict::Pass(stamp) => {
                ResponseFuture::call(self.inner.call(req), stamp, self.shared.clone())
            }
        }
    }
}

const MISSING_KEY: &str = "__missing_key__";

/// What to do with a request once decided.
enum Verdict {
    /// Call the inner service; stamp the rate-limit fields of policy `.0` on the response.
    Pass(Option<(usize, Decision)>),
    /// Answer with this response instead.
    Refuse(Response<Bytes>),
}

impl<S, K, Bk, L, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, K, Bk, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor<ReqBody>,
    Bk: Backend,
    L: OnLimited,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, K, Bk, L>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let head = RequestHead {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        };
        if shared.exempt.iter().any(|p| p == head.uri.path()) {
            return ResponseFuture::call(self.inner.call(req), None, self.shared.clone());
        }
        let Some(idx) = shared.policies.iter().position(|p| p.matches(head)) else {
            return ResponseFuture::call(self.inner.call(req), None, self.shared.clone());
        };
        let policy = &shared.policies[idx];
        let key = match shared.key.extract(&req) {
            Ok(key) => key,
            Err(missing) => match shared.missing {
                MissingKeyAction::Reject => {
                    tracing::error!(policy = %policy.name, %missing, "rate limit: no key for this request; answering 500");
                    let res = if is_grpc(&req) {
                        grpc_error("13", "rate%20limit%20key%20missing")
                    } else {
                        let mut res = Response::new(Bytes::from_static(b"Internal Server Error\n"));
                        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        res
                    };
                    return ResponseFuture::ready(res, self.shared.clone());
                }
                MissingKeyAction::SharedKey => MISSING_KEY.to_owned(),
            },
        };
        if shared.allow.contains(&key) {
            return ResponseFuture::call(self.inner.call(req), None, self.shared.clone());
        }
        let cost = policy.cost_of(head);
        let grpc = is_grpc(&req);

        if !shared.backend.is_local()
            && let Some(until) = shared.offenders.blocked_until(&policy.name, &key)
        {
            // Refused by Redis until `until`: refuse again without asking.
            let wait = until.saturating_duration_since(Instant::now());
            let decision = Decision {
                allowed: false,
                limit: policy.quota.count(),
                remaining: 0,
                reset_after: wait,
                retry_after: Some(wait),
            };
            let verdict = verdict(shared, idx, &key, cost, Ok(decision), grpc, None);
            return self.respond(req, verdict);
        }

        match shared
            .backend
            .decide(&policy.name, &key, &policy.quota, cost)
        {
            Decide::Ready(result) => {
                let verdict = verdict(shared, idx, &key, cost, result, grpc, None);
                self.respond(req, verdict)
            }
            Decide::Pending(decision) => {
                // The inner service is driven to readiness by `poll_ready`; take that one and
                // leave a clone behind for the next request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Deciding {
                        decision,
                        pending: Some(Pending {
                            req,
                            inner,
                            idx,
                            key,
                            cost,
                            grpc,
                            started: Instant::now(),
                        }),
                    },
                    shared: self.shared.clone(),
                }
            }
        }
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Turns a decision (or a backend failure) into what happens to the request.
fn verdict<K, Bk, L: OnLimited>(
    shared: &Shared<K, Bk, L>,
    idx: usize,
    key: &str,
    cost: u32,
    result: Result<Decision, BackendError>,
    grpc: bool,
    started: Option<Instant>,
) -> Verdict {
    let policy = &shared.policies[idx];
    let metrics = policy.metrics();
    if let Some(started) = started {
        metrics.latency.record(started.elapsed().as_secs_f64());
    }
    let decision = match result {
        Ok(d) => {
            if started.is_some() && shared.degraded.swap(false, Ordering::Relaxed) {
                tracing::info!(policy = %policy.name, "rate limit backend is back; limiting fleet-wide again");
            }
            d
        }
        Err(e) => {
            metrics.backend_errors.increment(1);
            if !shared.degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(policy = %policy.name, error = %e, failure_mode = ?shared.failure,
                    fallback = shared.fallback.is_some(), "rate limit backend failed; degrading");
            }
            if let Some(fallback) = &shared.fallback {
                fallback.decide_now(&policy.name, key, &policy.quota, cost)
            } else {
                return match shared.failure {
                    FailureMode::Open => Verdict::Pass(None),
                    FailureMode::Closed if grpc => {
                        Verdict::Refuse(grpc_error("14", "rate%20limiter%20unavailable"))
                    }
                    FailureMode::Closed => {
                        let mut res = Response::new(Bytes::from_static(b"Service Unavailable\n"));
                        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        Verdict::Refuse(res)
                    }
                };
            }
        }
    };
    if decision.allowed {
        metrics.allowed.increment(1);
        return Verdict::Pass(Some((idx, decision)));
    }
    if let (Some(started), Some(retry)) = (started, decision.retry_after) {
        // Counted from when the question was sent, so the local block never outlasts
        // Redis' own answer.
        shared.offenders.block(&policy.name, key, started + retry);
    }
    if policy.shadow {
        metrics.shadow_limited.increment(1);
        tracing::debug!(policy = %policy.name, key, "rate limit (shadow): would refuse");
        return Verdict::Pass(Some((idx, decision)));
    }
    metrics.limited.increment(1);
    tracing::debug!(policy = %policy.name, key, "rate limit: refused");
    let mut res = if grpc {
        grpc_refusal()
    } else {
        shared.on_limited.on_limited(&Limited {
            policy,
            key,
            decision: &decision,
        })
    };
    headers::write(
        res.headers_mut(),
        policy,
        &decision,
        true,
        shared.header_mode,
    );
    Verdict::Refuse(res)
}

/// A trailers-only gRPC response: HTTP 200, `grpc-status: 8` (RESOURCE_EXHAUSTED).
fn grpc_refusal() -> Response<Bytes> {
    grpc_error("8", "rate%20limit%20exceeded")
}

/// A trailers-only gRPC response with `grpc-status: code` and a percent-encoded message:
/// 8 RESOURCE_EXHAUSTED (refused), 13 INTERNAL (no key), 14 UNAVAILABLE (fail closed).
fn grpc_error(code: &'static str, message: &'static str) -> Response<Bytes> {
    let mut res = Response::new(Bytes::new());
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    res
}

/// A request waiting for its decision.
struct Pending<S, ReqBody> {
    req: Request<ReqBody>,
    inner: S,
    idx: usize,
    key: String,
    cost: u32,
    grpc: bool,
    started: Instant,
}

pin_project! {
    /// Response future of [`RateLimit`].
    pub struct ResponseFuture<S, ReqBody, K, Bk, L>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        shared: Arc<Shared<K, Bk, L>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Deciding {
            decision: DecisionFuture,
            pending: Option<Pending<S, ReqBody>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            stamp: Option<(usize, Decision)>,
        },
        Ready {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody, K, Bk, L> ResponseFuture<S, ReqBody, K, Bk, L>
where
    S: Service<Request<ReqBody>>,
{
    fn call(
        future: S::Future,
        stamp: Option<(usize, Decision)>,
        shared: Arc<Shared<K, Bk, L>>,
    ) -> Self {
        Self {
            state: State::Calling { future, stamp },
            shared,
        }
    }

    fn ready(response: Response<Bytes>, shared: Arc<Shared<K, Bk, L>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
            shared,
        }
    }
}

impl<S, ReqBody, ResBody, K, Bk, L> Future for ResponseFuture<S, ReqBody, K, Bk, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    L: OnLimited,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decision, pending } => {
                    let result = ready!(decision.as_mut().poll(cx));
                    let Some(p) = pending.take() else {
                        // Polled again after finishing: answer rather than hang.
                        this.state.set(State::Ready { response: None });
                        continue;
                    };
                    match verdict(
                        this.shared,
                        p.idx,
                        &p.key,
                        p.cost,
                        result,
                        p.grpc,
                        Some(p.started),
                    ) {
                        Verdict::Refuse(res) => this.state.set(State::Ready {
                            response: Some(res),
                        }),
                        Verdict::Pass(stamp) => {
                            let mut inner = p.inner;
                            let future = inner.call(p.req);
                            this.state.set(State::Calling { future, stamp });
                        }
                    }
                }
                StateProj::Calling { future, stamp } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some((idx, decision)) = stamp.take() {
                        let policy = &this.shared.policies[idx];
                        // A shadow refusal passes: it carries the fields, not `Retry-After`.
                        headers::write(
                            res.headers_mut(),
                            policy,
                            &decision,
                            false,
                            this.shared.header_mode,
                        );
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::inner)));
                }
                StateProj::Ready { response } => {
                    let res = response.take().unwrap_or_else(|| {
                        let mut r = Response::new(Bytes::new());
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    });
                    return Poll::Ready(Ok(res.map(ResponseBody::full)));
                }
            }
        }
    }
}

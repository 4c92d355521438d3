//! The rate-limit service: picks the policy and the key of a request and asks the backend.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::{
    Backend, Decide, Decision, KeyExtractor, MissingKey, Outcome, RequestHead, ResponseBody,
    future::{Delayed, Pending, Reservation, ResponseFuture},
    on_limited::OnLimited,
    state::{MissingKeyAction, Shared},
    verdict::{Asked, Verdict, grpc_error, verdict},
};

/// The rate-limit middleware: see [`RateLimitLayer`](crate::RateLimitLayer).
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
    turret_body::inner_service_accessors!();

    /// Calls the inner service at once, or after a delay, or answers with the refusal.
    fn respond<ReqBody>(
        &mut self,
        req: Request<ReqBody>,
        verdict: Verdict,
        reserve: impl FnOnce(&Arc<Shared<K, Bk, L>>) -> Reservation,
    ) -> ResponseFuture<S, ReqBody, K, Bk, L>
    where
        S: Service<Request<ReqBody>> + Clone,
    {
        match verdict {
            Verdict::Refuse(res) => ResponseFuture::ready(res, self.shared.clone()),
            Verdict::Pass { stamp, delay } if !delay.is_zero() => {
                // The inner service is ready (`poll_ready`): take it along and leave a clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let delayed = Delayed {
                    req,
                    inner,
                    stamp,
                    reservation: reserve(&self.shared),
                };
                ResponseFuture::waiting(delay, delayed, self.shared.clone())
            }
            Verdict::Pass { stamp, .. } => {
                ResponseFuture::call(self.inner.call(req), stamp, self.shared.clone())
            }
        }
    }
}

const MISSING_KEY: &str = "__missing_key__";

/// The body of the `500` a request without a key gets: says which layer answered, without
/// telling a client how the server is configured (the log line says that).
pub(crate) const MISSING_KEY_BODY: &[u8] =
    b"Internal Server Error: the rate limiter found no key for this request (see the server's log)\n";

pub(crate) static MISSING_KEY_REPORTED: AtomicBool = AtomicBool::new(false);

/// A missing key is a misconfiguration and must never be silent: when the process has no
/// global `tracing` subscriber, the `error!` above goes nowhere, so the first occurrence is
/// also written to stderr (once per process). Returns whether it wrote.
pub(crate) fn report_missing_key(
    reported: &AtomicBool,
    policy: &str,
    missing: &MissingKey,
) -> bool {
    if tracing::dispatcher::has_been_set() || reported.swap(true, Ordering::Relaxed) {
        return false;
    }
    eprintln!(
        "turret-ratelimit: policy {policy:?}: no key for a request, answered 500 ({missing}). \
         This is printed once because no tracing subscriber is set; \
         `on_missing_key` on the layer chooses another outcome."
    );
    true
}

impl<S, K, Bk, L, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, K, Bk, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Body,
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
        let head = RequestHead::of(&req);
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
                    report_missing_key(&MISSING_KEY_REPORTED, &policy.name, &missing);
                    let res = if is_grpc(&req) {
                        grpc_error(
                            "13",
                            HeaderValue::from_static("rate%20limit%20key%20missing"),
                        )
                    } else {
                        let mut res = Response::new(Bytes::from_static(MISSING_KEY_BODY));
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
        let plan = policy.plan_for(head, &key);
        let cost = policy.cost_of(head);
        let grpc = is_grpc(&req);

        if !shared.backend.is_local()
            && let Some((until, binding)) =
                shared.offenders.blocked_until(&policy.name, &key, &plan)
        {
            // Refused by Redis until `until`: refuse again without asking.
            let wait = until.saturating_duration_since(Instant::now());
            let limit = plan.limits().get(binding).map_or(0, |l| l.quota().count());
            let decision = Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: wait,
                retry_after: Some(wait),
            };
            let outcome = Outcome::refused_by(plan.limits().len(), binding, decision);
            let asked = Asked {
                idx,
                plan: &plan,
                key: &key,
                cost,
                grpc,
                started: None,
            };
            let verdict = verdict(shared, &asked, Ok(outcome));
            // An offender's refusal is never delayed: nothing to reserve.
            return self.respond(req, verdict, |_| Reservation::none());
        }

        // Delay mode: a place among the key's waiters, or no delay.
        let waiter = match policy.delay {
            Some(_) if plan.is_all_gcra() => shared.waiting.enter(idx, &key, policy.max_waiting),
            _ => None,
        };
        let max_delay = match (&waiter, policy.delay) {
            (Some(_), Some(delay)) => delay,
            _ => Duration::ZERO,
        };
        match shared
            .backend
            .decide(&policy.name, &key, &plan, cost, max_delay)
        {
            Decide::Ready(result) => {
                let asked = Asked {
                    idx,
                    plan: &plan,
                    key: &key,
                    cost,
                    grpc,
                    started: None,
                };
                let verdict = verdict(shared, &asked, result);
                self.respond(req, verdict, |shared| {
                    Reservation::new(shared, idx, &plan, &key, cost, waiter)
                })
            }
            Decide::Pending(decision) => {
                // The inner service is driven to readiness by `poll_ready`; take that one and
                // leave a clone behind for the next request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let pending = Pending {
                    req,
                    inner,
                    idx,
                    plan,
                    key,
                    cost,
                    grpc,
                    started: Instant::now(),
                    waiter,
                };
                ResponseFuture::deciding(decision, pending, self.shared.clone())
            }
        }
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

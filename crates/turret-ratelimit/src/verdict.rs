//! What happens to a request once decided: the decision (or the backend's failure) turned
//! into "call the inner service" or "answer with this refusal".

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::{
    BackendError, Decision, grpc, headers,
    on_limited::{Limited, OnLimited},
    state::{FailureMode, Shared},
};

/// What to do with a request once decided.
pub(crate) enum Verdict {
    /// Call the inner service; stamp the rate-limit fields of policy `.0` on the response.
    Pass(Option<(usize, Decision)>),
    /// Answer with this response instead.
    Refuse(Response<Bytes>),
}

/// Turns a decision (or a backend failure) into what happens to the request.
pub(crate) fn verdict<K, Bk, L: OnLimited>(
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
        grpc_refusal(decision.retry_after)
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

/// A trailers-only gRPC response: HTTP 200, `grpc-status: 8` (RESOURCE_EXHAUSTED), and the
/// retry delay as a `google.rpc.RetryInfo` in `grpc-status-details-bin`.
fn grpc_refusal(retry_after: Option<Duration>) -> Response<Bytes> {
    let mut res = grpc_error("8", "rate%20limit%20exceeded");
    if let Some(retry) = retry_after {
        res.headers_mut().insert(
            "grpc-status-details-bin",
            grpc::status_details(8, "rate limit exceeded", retry),
        );
    }
    res
}

/// A trailers-only gRPC response with `grpc-status: code` and a percent-encoded message:
/// 8 RESOURCE_EXHAUSTED (refused), 13 INTERNAL (no key), 14 UNAVAILABLE (fail closed).
pub(crate) fn grpc_error(code: &'static str, message: &'static str) -> Response<Bytes> {
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

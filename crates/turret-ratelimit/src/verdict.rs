//! What happens to a request once decided: the outcome (or the backend's failure) turned
//! into "call the inner service" (at once, or after its turn) or "answer with this refusal".

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::{
    BackendError, Decision, Outcome, Plan, grpc, headers,
    on_limited::{Limited, OnLimited},
    state::{FailureMode, Shared},
};

/// The fields to stamp on an admitted response: the plan, the limit a client needs to hear
/// about and its decision.
pub(crate) struct Stamp {
    pub(crate) plan: Plan,
    pub(crate) binding: usize,
    pub(crate) decision: Decision,
}

/// What to do with a request once decided.
pub(crate) enum Verdict {
    /// Call the inner service after `delay` (zero: at once); stamp the rate-limit fields.
    Pass {
        stamp: Option<Stamp>,
        delay: Duration,
    },
    /// Answer with this response instead.
    Refuse(Response<Bytes>),
}

impl Verdict {
    fn pass(stamp: Option<Stamp>) -> Self {
        Verdict::Pass {
            stamp,
            delay: Duration::ZERO,
        }
    }
}

/// The request a verdict is about.
pub(crate) struct Asked<'a> {
    pub(crate) idx: usize,
    pub(crate) plan: &'a Plan,
    pub(crate) key: &'a str,
    pub(crate) cost: u32,
    pub(crate) grpc: bool,
    /// When the question was sent to a remote backend (`None`: decided locally).
    pub(crate) started: Option<Instant>,
}

/// Turns an outcome (or a backend failure) into what happens to the request.
pub(crate) fn verdict<K, Bk, L: OnLimited>(
    shared: &Shared<K, Bk, L>,
    asked: &Asked<'_>,
    result: Result<Outcome, BackendError>,
) -> Verdict {
    let policy = &shared.policies[asked.idx];
    let plan = asked.plan;
    let metrics = plan.metrics(&policy.name);
    if let Some(started) = asked.started {
        metrics.latency.record(started.elapsed().as_secs_f64());
    }
    let outcome = match result {
        Ok(o) => {
            if asked.started.is_some() && shared.degraded.swap(false, Ordering::Relaxed) {
                tracing::info!(policy = %policy.name, "rate limit backend is back; limiting fleet-wide again");
            }
            o
        }
        Err(e) => {
            metrics.backend_errors.increment(1);
            if !shared.degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(policy = %policy.name, error = %e, failure_mode = ?shared.failure,
                    fallback = shared.fallback.is_some(), "rate limit backend failed; degrading");
            }
            if let Some(fallback) = &shared.fallback {
                fallback.decide_plan_now(&policy.name, asked.key, plan, asked.cost, Duration::ZERO)
            } else {
                return match shared.failure {
                    FailureMode::Open => Verdict::pass(None),
                    FailureMode::Closed if asked.grpc => Verdict::Refuse(grpc_error(
                        "14",
                        HeaderValue::from_static("rate%20limiter%20unavailable"),
                    )),
                    FailureMode::Closed => {
                        let mut res = Response::new(Bytes::from_static(b"Service Unavailable\n"));
                        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        Verdict::Refuse(res)
                    }
                };
            }
        }
    };
    let binding = outcome.binding();
    let Some(&decision) = outcome.decisions().get(binding) else {
        // An outcome without decisions (a backend's bug): let the request through, as when
        // the backend fails open.
        return Verdict::pass(None);
    };
    let stamp = Stamp {
        plan: plan.clone(),
        binding,
        decision,
    };
    if outcome.allowed() {
        metrics.allowed.increment(1);
        if !outcome.delay().is_zero() {
            metrics.delayed.increment(1);
        }
        return Verdict::Pass {
            stamp: Some(stamp),
            delay: outcome.delay(),
        };
    }
    let retry_after = outcome.retry_after();
    if let (Some(started), Some(retry)) = (asked.started, retry_after) {
        // Counted from when the question was sent, so the local block never outlasts
        // Redis' own answer.
        shared
            .offenders
            .block(&policy.name, asked.key, plan, binding, started + retry);
    }
    let limit = &plan.limits()[binding.min(plan.limits().len() - 1)];
    if policy.shadow {
        metrics.shadow_limited.increment(1);
        tracing::debug!(policy = %policy.name, limit = limit.name(), key = asked.key, "rate limit (shadow): would refuse");
        return Verdict::pass(Some(stamp));
    }
    metrics.limited.increment(1);
    tracing::debug!(policy = %policy.name, limit = limit.name(), key = asked.key, "rate limit: refused");
    let mut res = if asked.grpc {
        grpc_refusal(limit.name(), retry_after)
    } else {
        shared.on_limited.on_limited(&Limited {
            policy,
            plan,
            limit,
            key: asked.key,
            decision: &decision,
        })
    };
    headers::write(
        res.headers_mut(),
        &stamp,
        true,
        retry_after,
        shared.header_mode,
    );
    Verdict::Refuse(res)
}

/// A trailers-only gRPC response: HTTP 200, `grpc-status: 8` (RESOURCE_EXHAUSTED), a message
/// naming the limit that refused, and the retry delay as a `google.rpc.RetryInfo` in
/// `grpc-status-details-bin`.
fn grpc_refusal(limit: &str, retry_after: Option<Duration>) -> Response<Bytes> {
    let message = format!("rate limit exceeded: {limit}");
    let encoded = percent_encode(&message);
    let mut res = grpc_error(
        "8",
        HeaderValue::from_str(&encoded)
            .unwrap_or_else(|_| HeaderValue::from_static("rate%20limit%20exceeded")),
    );
    if let Some(retry) = retry_after {
        res.headers_mut().insert(
            "grpc-status-details-bin",
            grpc::status_details(8, &message, retry),
        );
    }
    res
}

/// `grpc-message`'s percent-encoding (gRPC over HTTP/2): bytes outside printable ASCII, and
/// `%`, as `%XX`; spaces too, as every gRPC implementation accepts that.
fn percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A trailers-only gRPC response with `grpc-status: code` and a percent-encoded message:
/// 8 RESOURCE_EXHAUSTED (refused), 13 INTERNAL (no key), 14 UNAVAILABLE (fail closed).
pub(crate) fn grpc_error(code: &'static str, message: HeaderValue) -> Response<Bytes> {
    let mut res = Response::new(Bytes::new());
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    h.insert("grpc-message", message);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(
            percent_encode("rate limit exceeded: a%b"),
            "rate%20limit%20exceeded:%20a%25b"
        );
    }
}

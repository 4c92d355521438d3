//! The evaluation order of RFC 9110 §13.2.2, as a pure function.

use http::Method;

use crate::headers::{Conditions, Current};

/// What the preconditions decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Perform the method (steps 5 and 6).
    Proceed,
    /// 304 Not Modified (steps 3 and 4, GET/HEAD only).
    NotModified,
    /// 412 Precondition Failed (steps 1, 2 and 3 for other methods).
    PreconditionFailed,
}

/// Whether `method` is GET or HEAD, the methods that get a 304 rather than a 412.
pub(crate) fn is_get_or_head(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Methods that preconditions never apply to (RFC 9110 §13.2.1).
pub(crate) fn is_exempt(method: &Method) -> bool {
    method == Method::CONNECT || method == Method::OPTIONS || method == Method::TRACE
}

/// Evaluates `cond` against the selected representation's validators, in the order of
/// RFC 9110 §13.2.2. `current` is `None` when there is no current representation.
///
/// - If-Match: strong comparison; `*` is true iff a representation exists.
/// - If-Unmodified-Since (only without If-Match): false iff Last-Modified is later than the
///   date; without a Last-Modified it cannot be false.
/// - If-None-Match: weak comparison; `*` is false iff a representation exists. False → 304
///   for GET/HEAD, 412 otherwise.
/// - If-Modified-Since (only GET/HEAD without If-None-Match, and only with a Last-Modified):
///   false iff Last-Modified is not later than the date → 304.
pub(crate) fn evaluate(cond: &Conditions, method: &Method, current: Option<&Current>) -> Decision {
    // Step 1.
    if let Some(if_match) = &cond.if_match {
        if !if_match.matches_strong(current) {
            return Decision::PreconditionFailed;
        }
    } else if let Some(date) = cond.if_unmodified_since {
        // Step 2.
        if current
            .and_then(|c| c.last_modified)
            .is_some_and(|lm| lm > date)
        {
            return Decision::PreconditionFailed;
        }
    }
    let safe = is_get_or_head(method);
    // Step 3.
    if let Some(if_none_match) = &cond.if_none_match {
        if if_none_match.matches_weak(current) {
            return if safe {
                Decision::NotModified
            } else {
                Decision::PreconditionFailed
            };
        }
    } else if safe {
        // Step 4.
        if let Some(date) = cond.if_modified_since
            && current
                .and_then(|c| c.last_modified)
                .is_some_and(|lm| lm <= date)
        {
            return Decision::NotModified;
        }
    }
    Decision::Proceed
}

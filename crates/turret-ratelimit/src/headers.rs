//! Rate-limit response header fields: draft-ietf-httpapi-ratelimit-headers-10
//! (`RateLimit-Policy`, `RateLimit`), the de-facto `X-RateLimit-*`, and `Retry-After`
//! (RFC 9110 §10.2.3, delay-seconds).

use std::{sync::LazyLock, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::verdict::Stamp;

/// Which responses carry the rate-limit header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderMode {
    /// Every response of a limited policy (the default).
    #[default]
    Always,
    /// Only refusals (`429`).
    OnRefusal,
    /// None (a refusal still carries `Retry-After`).
    Never,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Numbers below this are written from [`SMALL`], without formatting or allocating.
const SMALL_NUMBERS: u64 = 1024;

/// The field values `0` to `1023`, each a `'static` slice of one string made once: most
/// remaining counts and reset times are small, and a clone of a static value copies a
/// pointer, where `HeaderValue::from(n)` formats and allocates.
static SMALL: LazyLock<Box<[HeaderValue]>> = LazyLock::new(|| {
    let mut digits = String::new();
    let mut ends = Vec::with_capacity(SMALL_NUMBERS as usize);
    for n in 0..SMALL_NUMBERS {
        digits.push_str(itoa::Buffer::new().format(n));
        ends.push(digits.len());
    }
    let digits: &'static str = Box::leak(digits.into_boxed_str());
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let v = HeaderValue::from_static(&digits[start..end]);
            start = end;
            v
        })
        .collect()
});

/// A number as a field value.
fn number(n: u64) -> HeaderValue {
    if n < SMALL_NUMBERS {
        SMALL[n as usize].clone()
    } else {
        HeaderValue::from(n)
    }
}

/// Whole seconds, rounded up: a client told to wait "0 s" would retry at once.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// The delay a refused client is told to wait (`Retry-After` and `t`), at least 1 s.
pub(crate) fn retry_secs(retry_after: Option<Duration>) -> Option<u64> {
    retry_after.map(|r| ceil_secs(r).max(1))
}

/// Writes the fields for one outcome: `RateLimit-Policy` lists every limit of the plan;
/// `RateLimit` and `X-RateLimit-*` report the binding limit (on a refusal the one refusing
/// longest, on an admission the one closest to exhaustion). On a refusal `Retry-After` is
/// `retry_after`, when every limit would admit the request again, and `t` equals it (so
/// `Retry-After` is never earlier than `t`); on an admission `t` is the time until the
/// binding limit is whole again.
pub(crate) fn write(
    headers: &mut HeaderMap,
    stamp: &Stamp,
    refused: bool,
    retry_after: Option<Duration>,
    mode: HeaderMode,
) {
    let d = &stamp.decision;
    let retry = if refused {
        retry_secs(retry_after)
    } else {
        None
    };
    if let Some(secs) = retry {
        headers.insert(http::header::RETRY_AFTER, number(secs));
    }
    let show = match mode {
        HeaderMode::Always => true,
        HeaderMode::OnRefusal => refused,
        HeaderMode::Never => false,
    };
    if !show {
        return;
    }
    let Some(limit) = stamp.plan.limits().get(stamp.binding) else {
        return;
    };
    let t = retry.unwrap_or_else(|| ceil_secs(d.reset_after));
    headers.insert(RATELIMIT_POLICY.clone(), stamp.plan.policy_field().clone());
    // `"name";r=…;t=…`, built once into one buffer that becomes the header value.
    let mut value = Vec::with_capacity(limit.quoted_name.len() + 46);
    value.extend_from_slice(&limit.quoted_name);
    value.extend_from_slice(b";r=");
    value.extend_from_slice(itoa::Buffer::new().format(d.remaining).as_bytes());
    value.extend_from_slice(b";t=");
    value.extend_from_slice(itoa::Buffer::new().format(t).as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(RATELIMIT.clone(), v);
    }
    headers.insert(X_LIMIT.clone(), limit.limit_field.clone());
    headers.insert(X_REMAINING.clone(), number(u64::from(d.remaining)));
    headers.insert(X_RESET.clone(), number(t));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, Plan, Quota};

    #[test]
    fn numbers_are_written_as_from_formats_them_on_both_sides_of_the_table() {
        for n in (0..2 * SMALL_NUMBERS).chain([u64::from(u32::MAX), u64::MAX]) {
            assert_eq!(number(n), HeaderValue::from(n), "{n}");
        }
    }

    fn stamp(plan: &Plan, decision: Decision) -> Stamp {
        Stamp {
            plan: plan.clone(),
            binding: 0,
            decision,
        }
    }

    fn decision(allowed: bool, remaining: u32, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 100,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn allowed_response_fields_are_structured_fields() {
        let plan = Plan::new("per-ip", Quota::per_minute(100));
        let mut h = HeaderMap::new();
        write(
            &mut h,
            &stamp(&plan, decision(true, 42, 30_500, None)),
            false,
            None,
            HeaderMode::Always,
        );
        assert_eq!(h["ratelimit-policy"], "\"per-ip\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"per-ip\";r=42;t=31");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "42");
        assert_eq!(h["x-ratelimit-reset"], "31");
        assert!(h.get("retry-after").is_none());

        // Both parse as SF Lists with the documented parameters.
        let list = sfv::Parser::new(h["ratelimit"].to_str().unwrap())
            .parse::<sfv::List>()
            .unwrap();
        let sfv::ListEntry::Item(item) = &list[0] else {
            panic!("an item")
        };
        assert_eq!(
            item.bare_item,
            sfv::BareItem::String(sfv::string_ref("per-ip").to_owned())
        );
        assert_eq!(
            item.params.get("r"),
            Some(&sfv::BareItem::Integer(sfv::integer(42)))
        );
        let policy = sfv::Parser::new(h["ratelimit-policy"].to_str().unwrap())
            .parse::<sfv::List>()
            .unwrap();
        let sfv::ListEntry::Item(item) = &policy[0] else {
            panic!("an item")
        };
        assert_eq!(
            item.params.get("q"),
            Some(&sfv::BareItem::Integer(sfv::integer(100)))
        );
        assert_eq!(
            item.params.get("w"),
            Some(&sfv::BareItem::Integer(sfv::integer(60)))
        );
    }

    #[test]
    fn refusal_retry_after_rounds_up_and_matches_t() {
        let plan = Plan::new("p", Quota::per_second(10));
        let mut h = HeaderMap::new();
        write(
            &mut h,
            &stamp(&plan, decision(false, 0, 1000, Some(100))),
            true,
            Some(Duration::from_millis(100)),
            HeaderMode::Always,
        );
        assert_eq!(h["retry-after"], "1", "never 'retry after 0 s'");
        assert_eq!(h["ratelimit"], "\"p\";r=0;t=1");
        assert_eq!(h["x-ratelimit-reset"], "1");
        let mut h = HeaderMap::new();
        write(
            &mut h,
            &stamp(&plan, decision(false, 0, 1000, Some(2001))),
            true,
            Some(Duration::from_millis(2001)),
            HeaderMode::Never,
        );
        assert_eq!(h["retry-after"], "3");
        assert!(h.get("ratelimit").is_none());
    }

    #[test]
    fn policy_names_cannot_break_the_field() {
        let policy = crate::Policy::new("a\"b\\c d", Quota::per_second(1));
        assert_eq!(policy.name(), "a_b_c_d");
    }
}

//! Storability (RFC 9111 §3), freshness lifetime (§4.2.1) and age (§4.2.3): pure functions.
//! Times are durations since the Unix epoch.

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::{
    SetCookie,
    cache_control::{CacheControl, Delta, parse_delta_seconds},
};

/// Statuses that are heuristically cacheable (RFC 9110 §15.1).
const HEURISTIC_STATUSES: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Upper bound of a heuristic lifetime (a common choice; RFC 9111 §4.2.2 leaves it open).
const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The layer's storing options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreRules {
    /// RFC 9111 §4.2.2 heuristic freshness (10% of Date − Last-Modified), off by default.
    pub(crate) heuristics: bool,
    /// Lifetime for responses with no explicit freshness (policy, not RFC).
    pub(crate) default_ttl: Option<Duration>,
    /// Responses that set cookies.
    pub(crate) set_cookie: SetCookie,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
}

impl NotStorable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NoFreshness => "no-freshness",
        }
    }
}

/// Whether a shared cache may store the response (RFC 9111 §3, §3.5), and its freshness
/// lifetime when it may (zero for an unqualified `no-cache`: stored, revalidated on every
/// reuse). Stricter than the RFC where storing would not help or would leak: `Vary: *` (never
/// matches) and `Set-Cookie` (unless [`SetCookie::StoreWithout`]).
pub(crate) fn storable(
    method: &Method,
    request_has_authorization: bool,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    rules: &StoreRules,
    response_time: Duration,
) -> Result<Duration, NotStorable> {
    // §3: the method is understood and cacheable; only GET fills (HEAD has no body).
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    // §3: a final status; 206 needs range support, which we lack; RFC 6585 §4: never 429.
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return Err(NotStorable::Status);
    }
    // §3: no `no-store`.
    if cc.no_store {
        return Err(NotStorable::NoStore);
    }
    // §3 / §5.2.2.7: a shared cache does not store an unqualified `private`.
    if cc.private.is_unqualified() {
        return Err(NotStorable::Private);
    }
    // §3.5: with Authorization, only `public`, `s-maxage` or `must-revalidate` allow it.
    if request_has_authorization
        && !(cc.public || cc.must_revalidate || !matches!(cc.s_maxage, Delta::Absent))
    {
        return Err(NotStorable::Authorization);
    }
    if headers.contains_key(header::SET_COOKIE)
        && rules.set_cookie == SetCookie::Bypass
        && !is_stripped(cc, "set-cookie")
    {
        return Err(NotStorable::SetCookie);
    }
    // §4.1: `Vary: *` always fails to match.
    if vary_has_star(headers) {
        return Err(NotStorable::VaryStar);
    }
    // §5.2.2.4: storable, but every reuse must be validated.
    if cc.no_cache.is_unqualified() {
        return Ok(Duration::ZERO);
    }
    // §3: explicit freshness, or a heuristically cacheable status (or `public`).
    if let Some(lifetime) = explicit_lifetime(cc, headers, response_time) {
        return Ok(lifetime);
    }
    let heuristic_ok = cc.public || HEURISTIC_STATUSES.contains(&status.as_u16());
    if !heuristic_ok {
        return Err(NotStorable::NoFreshness);
    }
    if rules.heuristics
        && let Some(lifetime) = heuristic_lifetime(headers, response_time)
    {
        return Ok(lifetime);
    }
    rules.default_ttl.ok_or(NotStorable::NoFreshness)
}

/// Whether a qualified `private` / `no-cache` names `field`, so it is removed before storing.
fn is_stripped(cc: &CacheControl, field: &str) -> bool {
    cc.private
        .fields()
        .iter()
        .chain(cc.no_cache.fields())
        .any(|f| f == field)
}

/// Whether any `Vary` member is `*` (RFC 9111 §4.1).
pub(crate) fn vary_has_star(headers: &HeaderMap) -> bool {
    headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|m| m.trim_ascii() == b"*")
    })
}

/// RFC 9111 §4.2.1 for a shared cache: `s-maxage`, else `max-age`, else `Expires − Date`.
/// `None` when none is present. An invalid or duplicate directive, or an invalid `Expires`,
/// gives zero (already stale).
pub(crate) fn explicit_lifetime(
    cc: &CacheControl,
    headers: &HeaderMap,
    response_time: Duration,
) -> Option<Duration> {
    for d in [cc.s_maxage, cc.max_age] {
        match d {
            Delta::Seconds(s) => return Some(Duration::from_secs(s)),
            Delta::Invalid => return Some(Duration::ZERO),
            Delta::Absent => {}
        }
    }
    let expires = headers.get(header::EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        // §5.3: an invalid date, including "0", means already expired.
        return Some(Duration::ZERO);
    };
    let date = date_or(headers, response_time);
    Some(expires.saturating_sub(date))
}

/// RFC 9111 §4.2.2: 10% of the time since `Last-Modified`, at most a day.
fn heuristic_lifetime(headers: &HeaderMap, response_time: Duration) -> Option<Duration> {
    let last_modified = http_date(headers.get(header::LAST_MODIFIED)?)?;
    let date = date_or(headers, response_time);
    Some((date.saturating_sub(last_modified) / 10).min(HEURISTIC_MAX))
}

/// The `Date` value, or the time the response was received (RFC 9110 §6.6.1).
pub(crate) fn date_or(headers: &HeaderMap, response_time: Duration) -> Duration {
    headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or(response_time)
}

/// An HTTP-date (RFC 9110 §5.6.7) as time since the epoch.
pub(crate) fn http_date(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    httpdate::parse_http_date(s)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
}

/// The `Age` field (RFC 9111 §5.1): the first line, and of a list its first member. A value
/// that is not a non-negative integer is ignored, as if the field were absent (the response
/// is not stale for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgeValue {
    Absent,
    Seconds(u64),
}

pub(crate) fn age_value(headers: &HeaderMap) -> AgeValue {
    let Some(v) = headers.get(header::AGE) else {
        return AgeValue::Absent;
    };
    let first = v
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .unwrap_or_default();
    parse_delta_seconds(first.trim_ascii()).map_or(AgeValue::Absent, AgeValue::Seconds)
}

/// RFC 9111 §4.2.3: the current age of a stored response.
pub(crate) fn current_age(
    age_value: u64,
    date_value: Duration,
    request_time: Duration,
    response_time: Duration,
    now: Duration,
) -> Duration {
    let apparent_age = response_time.saturating_sub(date_value);
    let response_delay = response_time.saturating_sub(request_time);
    let corrected_age_value = Duration::from_secs(age_value).saturating_add(response_delay);
    let corrected_initial_age = apparent_age.max(corrected_age_value);
    let resident_time = now.saturating_sub(response_time);
    corrected_initial_age.saturating_add(resident_time)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: Duration = Duration::from_secs(1_700_000_000);
    const RULES: StoreRules = StoreRules {
        heuristics: false,
        default_ttl: None,
        set_cookie: SetCookie::Bypass,
    };

    fn date(d: Duration) -> HeaderValue {
        HeaderValue::from_str(&httpdate::fmt_http_date(UNIX_EPOCH + d)).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(
        method: Method,
        auth: bool,
        status: u16,
        h: &HeaderMap,
        rules: &StoreRules,
    ) -> Result<Duration, NotStorable> {
        let cc = CacheControl::from_headers(h);
        storable(
            &method,
            auth,
            StatusCode::from_u16(status).unwrap(),
            h,
            &cc,
            rules,
            T0,
        )
    }

    fn ok(pairs: &[(&str, &str)]) -> Result<Duration, NotStorable> {
        check(Method::GET, false, 200, &headers(pairs), &RULES)
    }

    #[test]
    fn get_with_max_age_is_storable_rfc9111_3() {
        assert_eq!(
            ok(&[("cache-control", "max-age=60")]),
            Ok(Duration::from_secs(60))
        );
    }

    #[test]
    fn only_get_fills_rfc9111_3() {
        let h = headers(&[("cache-control", "max-age=60")]);
        for m in [Method::HEAD, Method::POST, Method::PUT, Method::DELETE] {
            assert_eq!(check(m, false, 200, &h, &RULES), Err(NotStorable::Method));
        }
    }

    #[test]
    fn non_final_partial_and_429_are_not_stored_rfc9111_3_rfc6585_4() {
        let h = headers(&[("cache-control", "max-age=60")]);
        for s in [100, 103, 206, 304, 429] {
            assert_eq!(
                check(Method::GET, false, s, &h, &RULES),
                Err(NotStorable::Status),
                "{s}"
            );
        }
    }

    #[test]
    fn no_store_is_never_stored_rfc9111_3() {
        assert_eq!(
            ok(&[("cache-control", "max-age=60, no-store")]),
            Err(NotStorable::NoStore)
        );
    }

    #[test]
    fn unqualified_private_is_not_stored_by_a_shared_cache_rfc9111_5_2_2_7() {
        assert_eq!(
            ok(&[("cache-control", "private, max-age=60")]),
            Err(NotStorable::Private)
        );
        // The qualified form only strips the named field.
        assert!(ok(&[("cache-control", "private=\"x-user\", max-age=60")]).is_ok());
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate_rfc9111_3_5() {
        let plain = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(
            check(Method::GET, true, 200, &plain, &RULES),
            Err(NotStorable::Authorization)
        );
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            let h = headers(&[("cache-control", cc)]);
            assert!(check(Method::GET, true, 200, &h, &RULES).is_ok(), "{cc}");
        }
    }

    #[test]
    fn set_cookie_is_not_stored_unless_stripped_by_private_field() {
        assert_eq!(
            ok(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]),
            Err(NotStorable::SetCookie)
        );
        assert!(
            ok(&[
                ("cache-control", "max-age=60, private=\"set-cookie\""),
                ("set-cookie", "a=b")
            ])
            .is_ok()
        );
    }

    #[test]
    fn vary_star_in_any_position_is_not_stored_rfc9111_4_1() {
        assert_eq!(
            ok(&[("cache-control", "max-age=60"), ("vary", "accept, *")]),
            Err(NotStorable::VaryStar)
        );
        assert!(ok(&[("cache-control", "max-age=60"), ("vary", "accept")]).is_ok());
    }

    #[test]
    fn unqualified_no_cache_is_stored_with_no_freshness_rfc9111_5_2_2_4() {
        assert_eq!(
            ok(&[("cache-control", "no-cache, max-age=60")]),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn set_cookie_is_stored_only_when_the_policy_strips_it() {
        let h = headers(&[("cache-control", "max-age=60"), ("set-cookie", "s=1")]);
        assert_eq!(
            check(Method::GET, false, 200, &h, &RULES),
            Err(NotStorable::SetCookie)
        );
        let rules = StoreRules {
            set_cookie: SetCookie::StoreWithout,
            ..RULES
        };
        assert_eq!(
            check(Method::GET, false, 200, &h, &rules),
            Ok(Duration::from_secs(60))
        );
    }

    #[test]
    fn no_freshness_and_heuristics_off_is_not_stored_rfc9111_3() {
        assert_eq!(ok(&[]), Err(NotStorable::NoFreshness));
        assert_eq!(
            ok(&[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]),
            Err(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn heuristic_is_ten_percent_of_date_minus_last_modified_rfc9111_4_2_2() {
        let rules = StoreRules {
            heuristics: true,
            ..RULES
        };
        let h = headers(&[]);
        let mut h = h;
        h.insert(header::DATE, date(T0));
        h.insert(header::LAST_MODIFIED, date(T0 - Duration::from_secs(1000)));
        assert_eq!(
            check(Method::GET, false, 200, &h, &rules),
            Ok(Duration::from_secs(100))
        );
        // Not a heuristically cacheable status.
        assert_eq!(
            check(Method::GET, false, 500, &h, &rules),
            Err(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn default_ttl_applies_only_without_explicit_freshness() {
        let rules = StoreRules {
            default_ttl: Some(Duration::from_secs(300)),
            ..RULES
        };
        assert_eq!(
            check(Method::GET, false, 200, &headers(&[]), &rules),
            Ok(Duration::from_secs(300))
        );
        let h = headers(&[("cache-control", "max-age=5")]);
        assert_eq!(
            check(Method::GET, false, 200, &h, &rules),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            check(Method::GET, false, 500, &headers(&[]), &rules),
            Err(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn explicit_freshness_makes_other_statuses_storable_rfc9111_3() {
        let h = headers(&[("cache-control", "max-age=60")]);
        assert!(check(Method::GET, false, 500, &h, &RULES).is_ok());
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires_rfc9111_4_2_1() {
        let mut h = headers(&[("cache-control", "max-age=20, s-maxage=30")]);
        h.insert(header::DATE, date(T0));
        h.insert(header::EXPIRES, date(T0 + Duration::from_secs(10)));
        let life = |h: &HeaderMap| explicit_lifetime(&CacheControl::from_headers(h), h, T0);
        assert_eq!(life(&h), Some(Duration::from_secs(30)));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=20"),
        );
        assert_eq!(life(&h), Some(Duration::from_secs(20)));
        h.remove(header::CACHE_CONTROL);
        assert_eq!(life(&h), Some(Duration::from_secs(10)));
        h.remove(header::EXPIRES);
        assert_eq!(life(&h), None);
    }

    #[test]
    fn expires_without_date_uses_response_time_rfc9111_4_2_1() {
        let mut h = HeaderMap::new();
        h.insert(header::EXPIRES, date(T0 + Duration::from_secs(7)));
        assert_eq!(
            explicit_lifetime(&CacheControl::default(), &h, T0),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn invalid_expires_is_already_expired_rfc9111_5_3() {
        for v in ["0", "-1", "tomorrow"] {
            let h = headers(&[("expires", v)]);
            assert_eq!(
                explicit_lifetime(&CacheControl::default(), &h, T0),
                Some(Duration::ZERO),
                "{v}"
            );
        }
    }

    #[test]
    fn invalid_or_duplicate_max_age_is_stale_rfc9111_4_2_1() {
        for v in [
            "max-age=1.5",
            "max-age=5, max-age=5",
            "s-maxage=x, max-age=60",
        ] {
            let h = headers(&[("cache-control", v)]);
            assert_eq!(
                explicit_lifetime(&CacheControl::from_headers(&h), &h, T0),
                Some(Duration::ZERO),
                "{v}"
            );
        }
    }

    #[test]
    fn an_age_list_uses_its_first_member_and_an_invalid_age_is_ignored_rfc9111_5_1() {
        assert_eq!(age_value(&headers(&[])), AgeValue::Absent);
        assert_eq!(age_value(&headers(&[("age", "12")])), AgeValue::Seconds(12));
        assert_eq!(
            age_value(&headers(&[("age", "12"), ("age", "30")])),
            AgeValue::Seconds(12)
        );
        assert_eq!(
            age_value(&headers(&[("age", "1, 2")])),
            AgeValue::Seconds(1)
        );
        assert_eq!(
            age_value(&headers(&[("age", "0, 7200")])),
            AgeValue::Seconds(0)
        );
        for v in ["-5", "1.5", "7200.0", "abc", "", ", 7"] {
            assert_eq!(
                age_value(&headers(&[("age", v)])),
                AgeValue::Absent,
                "{v:?}"
            );
        }
    }

    #[test]
    fn current_age_follows_rfc9111_4_2_3() {
        let s = Duration::from_secs;
        // Date 10 s before receipt, no Age, no delay: apparent age 10, then 5 s resident.
        assert_eq!(current_age(0, T0 - s(10), T0, T0, T0 + s(5)), s(15));
        // Age 30 beats apparent 10; the request took 2 s.
        assert_eq!(current_age(30, T0 - s(10), T0 - s(2), T0, T0), s(32));
        // Date in the future (clock skew): apparent age is 0, not negative.
        assert_eq!(current_age(0, T0 + s(100), T0, T0, T0 + s(1)), s(1));
    }

    proptest! {
        #[test]
        fn any_bytes_in_caching_fields_do_not_panic(
            cc in prop::collection::vec(any::<u8>(), 0..48),
            age in prop::collection::vec(any::<u8>(), 0..24),
            expires in prop::collection::vec(any::<u8>(), 0..40),
            date_v in prop::collection::vec(any::<u8>(), 0..40),
            status in 100u16..1000,
            auth in any::<bool>(),
            now in any::<u64>(),
        ) {
            let mut h = HeaderMap::new();
            for (name, v) in [(header::CACHE_CONTROL, cc), (header::AGE, age), (header::EXPIRES, expires), (header::DATE, date_v)] {
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    h.insert(name, v);
                }
            }
            let c = CacheControl::from_headers(&h);
            let t = Duration::from_secs(now % (1 << 40));
            let _ = storable(&Method::GET, auth, StatusCode::from_u16(status).unwrap(), &h, &c, &RULES, t);
            let _ = explicit_lifetime(&c, &h, t);
            if let AgeValue::Seconds(a) = age_value(&h) {
                let _ = current_age(a, date_or(&h, t), t, t, Duration::MAX);
            }
        }
    }
}

//! Admission: whether a response may be stored and with which fields (RFC 9111 §3), its
//! lifetime and how long the backend keeps it, and its stale windows (RFC 5861). Pure
//! decisions over fields, next to `freshness.rs`; `fill.rs` talks to the storage.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, StatusCode, header};

use crate::{
    SetCookie,
    cache_control::{CacheControl, Delta},
    entry::HIT_FOR_MISS,
    freshness::{self, AgeValue, StoreRules},
    layer::Shared,
    lookup::Ctx,
    validate,
};

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

/// The lifetime and backend TTL of a response about to be stored, or why it is not.
pub(crate) struct Admission {
    pub(crate) cc: CacheControl,
    pub(crate) lifetime: Duration,
    pub(crate) initial_age: Duration,
    pub(crate) ttl: Duration,
}

/// The layer's storing rules under the policy: its TTL, or none when it stores only what the
/// headers allow.
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
pub(crate) fn admit(
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
pub(crate) fn tags(ctx: &Ctx, headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = ctx.policy.tags.clone();
    for name in &ctx.shared.tag_fields {
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            for tag in split_tags(value) {
                if !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_owned());
                }
            }
        }
    }
    tags
}

/// The tags of one tag field's value: separated by spaces, commas or tabs (as CDNs write
/// `Surrogate-Key` and `Cache-Tag`). A purge request's `Surrogate-Key` is split the same way.
pub(crate) fn split_tags(value: &str) -> impl Iterator<Item = &str> {
    value.split([' ', ',', '\t']).filter(|t| !t.is_empty())
}

/// The stale-serving windows of a stored response (RFC 5861), zero when it forbids stale
/// serving (RFC 9111 §4.2.4).
pub(crate) struct Windows {
    pub(crate) forbidden: bool,
    pub(crate) while_revalidate: Duration,
    pub(crate) if_error: Duration,
}

pub(crate) fn windows(ctx: &Ctx, headers: &HeaderMap) -> Windows {
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

/// The fields kept in storage: all but `Connection` and the fields it lists, the proxy
/// authentication fields (RFC 9111 §3.1), those named by a qualified `private` or
/// `no-cache` (RFC 9111 §5.2.2.4, §5.2.2.7), and `Set-Cookie` when stored without it.
pub(crate) fn stored_headers(
    headers: &HeaderMap,
    cc: &CacheControl,
    set_cookie: SetCookie,
) -> HeaderMap {
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

/// Whether an answer that may not be stored (`why`) leaves a hit-for-miss marker living
/// `lifetime`: only when it is the URL's answer — not a 5xx, nor a status that may never be
/// stored (1xx, 206, 304, 429) or a method that is never stored, which say nothing of the
/// next answer — and markers are on.
pub(crate) fn leaves_marker(status: StatusCode, why: &'static str, lifetime: Duration) -> bool {
    !lifetime.is_zero() && !status.is_server_error() && why != "status" && why != "method"
}

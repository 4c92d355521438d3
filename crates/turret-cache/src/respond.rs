//! Responses built from storage: a fresh hit (and the fast path that answers it inside
//! `call`), the reuse of a stored response (a 304 when the client's copy is current), a stale
//! response, the cache's 504s, and the `Age`, `Cache-Status` and `X-Cache` values.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Body;

use crate::{
    CachedResponse, Policy, ResponseBody, StorageFuture, Variants,
    cache_control::CacheControl,
    entry::{CACHE_STATUS, X_CACHE},
    layer::Shared,
    lookup::{Ctx, Lookup, select},
    policy::Outcome,
    range, validate,
};

/// The cache's identifier in `Cache-Status`.
const CACHE_NAME: &str = "turret";

/// The fast path's answer: a fresh hit, or the look-up to decide on the slow path.
// Returned and matched at once, never stored: boxing the hit would allocate on every hit.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FastPath<B: Body, Slow = StorageFuture<Variants>> {
    /// A fresh hit, answered without the inner service.
    Hit(Response<ResponseBody<B>>),
    /// Anything else (stale, a miss, a storage error): the look-up's answer, decided again
    /// on the slow path.
    Slow(Slow),
}

/// The fast path of a synchronous storage: a fresh hit answered inside `call`, with the key
/// still borrowed (no allocation for it).
pub(crate) fn fresh_hit<B: Body>(
    shared: &Shared,
    policy: &Policy,
    key: &str,
    head: bool,
    directives: &CacheControl,
    request: &HeaderMap,
    mut pending: StorageFuture<Variants>,
) -> FastPath<B> {
    let variants = match pending.take_ready() {
        None => return FastPath::Slow(pending),
        Some(Ok(variants)) => variants,
        Some(Err(e)) => return FastPath::Slow(StorageFuture::ready(Err(e))),
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
        Lookup::Fresh(entry, ttl) => {
            FastPath::Hit(hit(policy, key, head, &entry, ttl, now, request))
        }
        _ => FastPath::Slow(StorageFuture::ready(Ok(variants))),
    }
}

/// A fresh hit (counted): the stored response with `Age`, `Cache-Status` (`hit; ttl=N`, its
/// freshness left) and `X-Cache: HIT`, or a 304 when the client's copy is current.
pub(crate) fn hit<B: Body>(
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
    if !head
        && !conditional
        && !entry.facts().upstream_status
        && !request.contains_key(header::RANGE)
    {
        // The common hit: the prepared fields, two values replaced in place. (Not
        // `insert`: a cloned map has no spare room, and `insert` reserves one more slot
        // even when it replaces, so it would regrow the map on every hit.)
        let mut res = Response::new(ResponseBody::full(entry.body().clone()));
        *res.status_mut() = entry.status();
        *res.headers_mut() = entry.hit_headers();
        let headers = res.headers_mut();
        if let Some(age) = headers.get_mut(header::AGE) {
            *age = age_value(entry.age(now).as_secs());
        }
        if let Some(status) = headers.get_mut(CACHE_STATUS) {
            *status = hit_status(ttl.as_secs());
        }
        return res;
    }
    let mut res = reuse(entry, now, head, request);
    res.headers_mut()
        .append(CACHE_STATUS, hit_status(ttl.as_secs()));
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static("HIT"));
    range::apply(entry, request, head, res)
}

/// `turret; hit; ttl=N`; the first hour's values are static (made once, cloned without a
/// reference count).
fn hit_status(ttl: u64) -> HeaderValue {
    const PREFIX: &str = "turret; hit; ttl=";
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| static_values(PREFIX));
    usize::try_from(ttl)
        .ok()
        .and_then(|i| small.get(i))
        .cloned()
        .unwrap_or_else(|| {
            let mut value = Vec::with_capacity(PREFIX.len() + 20);
            value.extend_from_slice(PREFIX.as_bytes());
            push_digits(&mut value, ttl);
            HeaderValue::from_maybe_shared(Bytes::from(value))
                .unwrap_or_else(|_| HeaderValue::from_static("turret; hit"))
        })
}

/// How many `Age` and `Cache-Status` values are made once and shared: the first hour's.
const STATIC_VALUES: u64 = 3600;

/// `{prefix}0` to `{prefix}3599` as static header values: one string made (and kept) for
/// the life of the process, so that cloning and dropping a value on a hit is a copy, with
/// no reference count for the threads of a server to contend on.
fn static_values(prefix: &str) -> Vec<HeaderValue> {
    let mut all = String::new();
    let mut ends = Vec::with_capacity(STATIC_VALUES as usize);
    for n in 0..STATIC_VALUES {
        all.push_str(prefix);
        push_u64(&mut all, n);
        ends.push(all.len());
    }
    let all: &'static str = all.leak();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let value = HeaderValue::from_static(&all[start..end]);
            start = end;
            value
        })
        .collect()
}

/// A stored response for this request: a 304 when the client's `If-None-Match` /
/// `If-Modified-Since` says its copy is current (RFC 9110 §13.2.2), the full response
/// otherwise.
pub(crate) fn reuse<B: Body>(
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

/// A response built from storage: stored fields, `Age` (RFC 9111 §4.2.3, on every reuse;
/// `Date` is never rewritten), no body for HEAD.
pub(crate) fn from_storage<B: Body>(
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

/// An `Age` value; the first hour's are static (no allocation nor reference count on a
/// hit).
fn age_value(secs: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| static_values(""));
    usize::try_from(secs)
        .ok()
        .and_then(|i| small.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
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

/// Appends `n` in decimal (a `Cache-Status` parameter).
pub(crate) fn push_u64(out: &mut String, n: u64) {
    use std::fmt::Write as _;
    let _ = write!(out, "{n}");
}

/// Appends this cache's member to `Cache-Status` (RFC 9211 §2: keep the upstream members)
/// and sets `X-Cache`; removes the tag fields unless they are exposed (every response that
/// leaves the layer goes through here, or is built from storage, which never holds them).
pub(crate) fn annotate<B>(
    shared: &Shared,
    res: &mut Response<B>,
    member: &str,
    x_cache: &'static str,
) {
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

/// How long past its freshness a stored response is at `now`.
pub(crate) fn staleness(entry: &CachedResponse, now: Duration) -> Duration {
    entry.age(now).saturating_sub(entry.freshness_lifetime())
}

/// A stale response served without the origin (RFC 9111 §4.2.4).
pub(crate) fn serve_stale<B: Body>(
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
    range::apply(entry, request, ctx.head, res)
}

/// RFC 9111 §5.2.1.7: `only-if-cached` and nothing fits, a locally generated 504, so no
/// `Cache-Status` member (RFC 9211 §2).
pub(crate) fn gateway_timeout<B: Body>(ctx: &Ctx) -> Response<ResponseBody<B>> {
    ctx.policy.count(Outcome::OnlyIfCached);
    let mut res = Response::new(ResponseBody::full(Bytes::new()));
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    res
}

/// RFC 9111 §5.2.2.2: a stale `must-revalidate` (or `proxy-revalidate`, `s-maxage`)
/// response that the origin could not revalidate: a 504. It is based on the stored
/// response and the request was forwarded, so it carries `fwd=stale` (RFC 9211 §2).
pub(crate) fn cannot_revalidate<B: Body>(ctx: &Ctx) -> Response<ResponseBody<B>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_made_values_read_the_same() {
        for n in [0, 1, 9, 10, 59, 3599, 3600, 86_400, u64::MAX] {
            assert_eq!(age_value(n), n.to_string().as_str());
            assert_eq!(hit_status(n), format!("turret; hit; ttl={n}").as_str());
        }
    }
}

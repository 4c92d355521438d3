//! Range requests answered from storage (RFC 9110 §14): a single `bytes` range of a stored,
//! complete `200` becomes a `206` with `Content-Range`, an unsatisfiable one a `416`, and
//! `If-Range` (§13.1.5) decides whether the range applies at all. Pure: the stored entry, the
//! request's fields and the response built for it in, the response to send out.
//!
//! Choices the RFC leaves to the server:
//! - several ranges (`bytes=0-1,5-9`) are answered with the whole `200` (§14.2 allows
//!   ignoring `Range`; it also avoids `multipart/byteranges` amplification);
//! - a `Range` that does not parse, or names another unit, is ignored (§14.2);
//! - `HEAD` ignores `Range` (§14.2: range handling is defined for `GET` only).

use std::{ops::RangeInclusive, time::SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::{CachedResponse, ResponseBody};

/// What a `Range` field asks of a representation of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// No (usable) range: the whole representation.
    Whole,
    /// One satisfiable range: these bytes (inclusive).
    Part(RangeInclusive<u64>),
    /// A `bytes` range none of whose parts is satisfiable (§14.1.1): `416`.
    Unsatisfiable,
}

/// Reads `Range` (§14.1.2) against a representation of `len` bytes.
pub(crate) fn ranged(value: &[u8], len: u64) -> Ranged {
    let Ok(value) = std::str::from_utf8(value) else {
        return Ranged::Whole;
    };
    let Some((unit, set)) = value.trim().split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    let mut satisfiable = Vec::new();
    let mut specs = 0;
    for spec in set.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        if spec.is_empty() {
            // §5.6.1: empty list elements are allowed and ignored.
            continue;
        }
        specs += 1;
        if specs > 64 {
            // Far beyond any real client: treat as a request for the whole.
            return Ranged::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranged::Whole;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match (first, last) {
            // suffix-range: the last N bytes; N = 0 is unsatisfiable.
            ("", n) if digits(n) => {
                let Ok(n) = n.parse::<u64>() else {
                    // More digits than u64 holds: more than the whole.
                    if len > 0 {
                        satisfiable.push(0..=len - 1);
                    }
                    continue;
                };
                if n > 0 && len > 0 {
                    satisfiable.push(len.saturating_sub(n)..=len - 1);
                }
            }
            (a, "") if digits(a) => {
                if let Ok(a) = a.parse::<u64>()
                    && a < len
                {
                    satisfiable.push(a..=len - 1);
                }
            }
            (a, b) if digits(a) && digits(b) => {
                let Ok(a) = a.parse::<u64>() else { continue };
                let b = b.parse::<u64>().unwrap_or(u64::MAX);
                if b < a {
                    // §14.1.1: last-pos below first-pos makes the range invalid.
                    return Ranged::Whole;
                }
                if a < len {
                    satisfiable.push(a..=b.min(len - 1));
                }
            }
            _ => return Ranged::Whole,
        }
    }
    match (specs, satisfiable.len()) {
        (0, _) => Ranged::Whole,
        (_, 0) => Ranged::Unsatisfiable,
        (_, 1) => Ranged::Part(satisfiable.remove(0)),
        // Several: the whole 200 (see the module docs).
        _ => Ranged::Whole,
    }
}

/// §13.1.5: whether `If-Range` lets the range apply to the stored response: an entity-tag
/// that is strong and equal to the stored `ETag` (strong comparison), or an HTTP-date equal
/// to the stored `Last-Modified` when that is a strong validator (at least one second before
/// `Date`, §8.8.2.2). Anything else, or a malformed value, means the whole response.
fn if_range_holds(if_range: &HeaderValue, stored: &HeaderMap) -> bool {
    let value = if_range.as_bytes().trim_ascii();
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        if value.starts_with(b"W/") {
            return false;
        }
        return stored.get(header::ETAG).is_some_and(|etag| {
            let etag = etag.as_bytes().trim_ascii();
            !etag.starts_with(b"W/") && etag == value
        });
    }
    let Some(date) = http_date(if_range) else {
        return false;
    };
    let Some(modified) = stored.get(header::LAST_MODIFIED).and_then(http_date) else {
        return false;
    };
    let strong = stored
        .get(header::DATE)
        .and_then(http_date)
        .and_then(|d| d.duration_since(modified).ok())
        .is_some_and(|gap| gap.as_secs() >= 1);
    strong && date == modified
}

fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// The response to `request` built from `entry`: `res` as it is, or, when the request is a
/// `GET` with a `Range` that applies to the stored complete `200`, its `206` (the stored
/// fields and the ones `res` carries, `Content-Range`, the part's `Content-Length`) or `416`
/// (`Content-Range: bytes */LEN`, no body).
pub(crate) fn apply<B: http_body::Body>(
    entry: &CachedResponse,
    request: &HeaderMap,
    head: bool,
    mut res: Response<ResponseBody<B>>,
) -> Response<ResponseBody<B>> {
    let Some(range) = request.get(header::RANGE) else {
        return res;
    };
    if head || res.status() != StatusCode::OK || entry.status() != StatusCode::OK {
        return res;
    }
    if let Some(if_range) = request.get(header::IF_RANGE)
        && !if_range_holds(if_range, entry.headers())
    {
        return res;
    }
    let body: &Bytes = entry.body();
    let len = body.len() as u64;
    match ranged(range.as_bytes(), len) {
        Ranged::Whole => res,
        Ranged::Part(part) => {
            let (first, last) = (*part.start(), *part.end());
            let slice = body.slice(first as usize..=last as usize);
            *res.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = res.headers_mut();
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("bytes */0")),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(slice.len()));
            *res.body_mut() = ResponseBody::full(slice);
            res
        }
        Ranged::Unsatisfiable => {
            *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let headers = res.headers_mut();
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("bytes */0")),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            // A 416 describes no representation: no validators or type of the 200's.
            for name in [header::CONTENT_TYPE, header::ETAG, header::LAST_MODIFIED] {
                headers.remove(name);
            }
            *res.body_mut() = ResponseBody::full(Bytes::new());
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §14.1.1 and §14.1.2, one row per rule, against a 10,000-byte representation.
    #[test]
    fn range_values_per_rfc_9110_14_1() {
        let whole = Ranged::Whole;
        let part = |a: u64, b: u64| Ranged::Part(a..=b);
        let rows: &[(&str, Ranged)] = &[
            ("bytes=0-499", part(0, 499)),
            ("bytes=500-999", part(500, 999)),
            ("bytes=-500", part(9500, 9999)),
            ("bytes=9500-", part(9500, 9999)),
            ("bytes=0-0", part(0, 0)),
            ("bytes=-1", part(9999, 9999)),
            ("bytes=0-", part(0, 9999)),
            ("bytes=9000-20000", part(9000, 9999)),
            ("bytes=-20000", part(0, 9999)),
            ("BYTES = 1-2", part(1, 2)),
            ("bytes=1-2,", part(1, 2)),
            ("bytes=0-0,-1", whole.clone()),
            ("bytes=0-99,200-299", whole.clone()),
            ("bytes=10000-", Ranged::Unsatisfiable),
            ("bytes=10000-10005", Ranged::Unsatisfiable),
            ("bytes=-0", Ranged::Unsatisfiable),
            ("bytes=10000-,20000-", Ranged::Unsatisfiable),
            ("bytes=5-1", whole.clone()),
            ("bytes=a-b", whole.clone()),
            ("bytes=1", whole.clone()),
            ("bytes=", whole.clone()),
            ("bytes=--1", whole.clone()),
            ("bytes=+1-2", whole.clone()),
            ("items=0-1", whole.clone()),
            ("0-1", whole.clone()),
            ("bytes=99999999999999999999999-", Ranged::Unsatisfiable),
            ("bytes=0-99999999999999999999999", part(0, 9999)),
            ("bytes=-99999999999999999999999", part(0, 9999)),
        ];
        for (value, expected) in rows {
            assert_eq!(&ranged(value.as_bytes(), 10_000), expected, "{value}");
        }
        assert_eq!(ranged(b"bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(ranged(b"bytes=-5", 0), Ranged::Unsatisfiable);
        assert_eq!(ranged(&[0xff, b'='], 10), Ranged::Whole);
        let many = format!("bytes={}", vec!["0-0"; 65].join(","));
        assert_eq!(ranged(many.as_bytes(), 10), Ranged::Whole);
    }

    fn stored(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.insert(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn if_range_per_rfc_9110_13_1_5() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        let strong = stored(&[("etag", "\"v1\"")]);
        assert!(if_range_holds(&v("\"v1\""), &strong));
        assert!(!if_range_holds(&v("\"v2\""), &strong));
        assert!(
            !if_range_holds(&v("W/\"v1\""), &strong),
            "weak never matches"
        );
        let weak = stored(&[("etag", "W/\"v1\"")]);
        assert!(!if_range_holds(&v("\"v1\""), &weak));
        let dated = stored(&[
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("date", "Tue, 01 Dec 2026 12:00:00 GMT"),
        ]);
        assert!(if_range_holds(&v("Tue, 01 Dec 2026 10:00:00 GMT"), &dated));
        assert!(!if_range_holds(&v("Tue, 01 Dec 2026 10:00:01 GMT"), &dated));
        let weak_date = stored(&[
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(
            !if_range_holds(&v("Tue, 01 Dec 2026 10:00:00 GMT"), &weak_date),
            "a Last-Modified equal to Date is weak"
        );
        assert!(!if_range_holds(&v("yesterday"), &dated));
        assert!(!if_range_holds(&v("\"v1\""), &HeaderMap::new()));
    }
}

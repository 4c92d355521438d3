//! Validation: conditional requests answered from storage (RFC 9110 §13.1.2, §13.1.3),
//! revalidation requests (RFC 9111 §4.3.1) and header updates from a 304 (§3.2, §4.3.4).

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{cache_control::split_list, freshness::http_date};

/// Whether the stored response's `ETag` or `Last-Modified` lets the cache validate it.
pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// Whether the client's `If-None-Match` (weak comparison, RFC 9110 §13.1.2) or, without it,
/// `If-Modified-Since` (§13.1.3) says its copy is current, given the stored fields. A GET or
/// HEAD then gets a 304 (§13.2.2 steps 3 and 4).
pub(crate) fn client_copy_is_current(stored: &HeaderMap, request: &HeaderMap) -> bool {
    let inm: Vec<&HeaderValue> = request.get_all(header::IF_NONE_MATCH).iter().collect();
    if !inm.is_empty() {
        let Some(etag) = stored.get(header::ETAG).map(|v| opaque(v.as_bytes())) else {
            return inm.iter().any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        return inm.iter().any(|v| {
            v.as_bytes().trim_ascii() == b"*"
                || split_list(v.as_bytes()).any(|tag| opaque(tag) == etag)
        });
    }
    let Some(since) = request.get(header::IF_MODIFIED_SINCE).and_then(http_date) else {
        return false;
    };
    let modified = stored
        .get(header::LAST_MODIFIED)
        .or_else(|| stored.get(header::DATE))
        .and_then(http_date);
    modified.is_some_and(|m| m <= since)
}

/// The opaque part of an entity tag, for the weak comparison (`W/"x"` equals `"x"`).
fn opaque(tag: &[u8]) -> &[u8] {
    let tag = tag.trim_ascii();
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// The request fields of a conditional GET made by the client.
const CONDITIONALS: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Whether the request carries a precondition the cache does not evaluate itself
/// (`If-Match`, `If-Unmodified-Since`): such requests go to the origin as sent. (`If-Range`
/// the cache evaluates against what it stores, with the `Range` it goes with.)
pub(crate) fn has_foreign_precondition(request: &HeaderMap) -> bool {
    CONDITIONALS[2..4].iter().any(|n| request.contains_key(n))
}

/// Whether the request is a conditional GET the cache answers itself.
pub(crate) fn is_conditional(request: &HeaderMap) -> bool {
    request.contains_key(header::IF_NONE_MATCH) || request.contains_key(header::IF_MODIFIED_SINCE)
}

/// Removes the client's `If-None-Match` / `If-Modified-Since` (the cache evaluates them
/// against what it stores; the origin is asked for a full, storable response).
pub(crate) fn strip_client_conditionals(request: &mut HeaderMap) {
    request.remove(header::IF_NONE_MATCH);
    request.remove(header::IF_MODIFIED_SINCE);
}

/// RFC 9111 §4.3.1: a conditional request with the stored response's validators.
pub(crate) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    strip_client_conditionals(request);
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Whether a 304 applies to the stored response (RFC 9111 §4.3.4): its strong `ETag`, when
/// it has one, is the stored one.
pub(crate) fn selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    match (not_modified.get(header::ETAG), stored.get(header::ETAG)) {
        (Some(new), Some(old)) => opaque(new.as_bytes()) == opaque(old.as_bytes()),
        (Some(_), None) => false,
        _ => true,
    }
}

/// RFC 9111 §3.2: the stored fields updated from a 304: each field in the 304 replaces the
/// stored lines of that name, except `Content-Length` and the fields never stored (§3.1;
/// `Connection` and what it lists, proxy authentication).
pub(crate) fn updated_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    let mut skip: Vec<HeaderName> = vec![
        header::CONTENT_LENGTH,
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
    ];
    for value in not_modified.get_all(header::CONNECTION) {
        for name in value.as_bytes().split(|&b| b == b',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim_ascii()) {
                skip.push(name);
            }
        }
    }
    for name in not_modified.keys() {
        if skip.contains(name) {
            continue;
        }
        out.remove(name);
        for value in not_modified.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The fields a 304 to the client carries (RFC 9110 §15.4.5): those a 200 would have sent
/// that guide caches; no content metadata.
pub(crate) fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
    ] {
        for value in stored.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_conditional_fields_evaluate_without_panicking(
            etag in prop::collection::vec(any::<u8>(), 0..32),
            inm in prop::collection::vec(any::<u8>(), 0..64),
            ims in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut stored = HeaderMap::new();
            let mut request = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&etag) {
                stored.insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_bytes(&inm) {
                request.insert(header::IF_NONE_MATCH, v);
            }
            if let Ok(v) = HeaderValue::from_bytes(&ims) {
                request.insert(header::IF_MODIFIED_SINCE, v);
            }
            let _ = client_copy_is_current(&stored, &request);
            let _ = selects(&stored, &request);
            let mut forwarded = request.clone();
            add_validators(&mut forwarded, &stored);
        }
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn if_none_match_uses_weak_comparison_rfc9110_13_1_2() {
        let stored = h(&[("etag", "\"v1\"")]);
        assert!(client_copy_is_current(
            &stored,
            &h(&[("if-none-match", "W/\"v1\"")])
        ));
        assert!(client_copy_is_current(
            &stored,
            &h(&[("if-none-match", "\"x\", \"v1\"")])
        ));
        assert!(client_copy_is_current(
            &stored,
            &h(&[("if-none-match", "*")])
        ));
        assert!(!client_copy_is_current(
            &stored,
            &h(&[("if-none-match", "\"v2\"")])
        ));
    }

    #[test]
    fn if_modified_since_is_ignored_when_if_none_match_is_present_rfc9110_13_1_3() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        let req = h(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(!client_copy_is_current(&stored, &req));
        let req = h(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]);
        assert!(client_copy_is_current(&stored, &req));
        let req = h(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]);
        assert!(!client_copy_is_current(&stored, &req));
        let req = h(&[("if-modified-since", "garbage")]);
        assert!(!client_copy_is_current(&stored, &req));
    }

    #[test]
    fn a_304_replaces_fields_but_never_content_length_rfc9111_3_2() {
        let stored = h(&[
            ("content-length", "5"),
            ("cache-control", "max-age=10"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]);
        let nm = h(&[
            ("content-length", "0"),
            ("cache-control", "max-age=60"),
            ("x-a", "3"),
            ("connection", "x-hop"),
            ("x-hop", "no"),
        ]);
        let out = updated_headers(&stored, &nm);
        assert_eq!(out["content-length"], "5");
        assert_eq!(out["cache-control"], "max-age=60");
        assert_eq!(out.get_all("x-a").iter().count(), 1);
        assert!(!out.contains_key("x-hop"));
        assert!(!out.contains_key("connection"));
    }

    #[test]
    fn a_304_with_another_strong_etag_does_not_select_rfc9111_4_3_4() {
        let stored = h(&[("etag", "\"v1\"")]);
        assert!(selects(&stored, &h(&[("etag", "\"v1\"")])));
        assert!(!selects(&stored, &h(&[("etag", "\"v2\"")])));
        assert!(selects(&stored, &h(&[])));
    }

    #[test]
    fn revalidation_sends_the_stored_validators_rfc9111_4_3_1() {
        let stored = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        let mut req = h(&[("if-none-match", "\"client\"")]);
        add_validators(&mut req, &stored);
        assert_eq!(req["if-none-match"], "\"v1\"");
        assert_eq!(req["if-modified-since"], "Mon, 01 Jan 2024 00:00:00 GMT");
    }
}

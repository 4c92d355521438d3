//! The primary cache key (RFC 9111 §2): scheme, host, path and normalised query.

use http::{HeaderMap, Uri, header};

use crate::QueryKey;

/// The key of the request target: `scheme://host[:port]/path?query`, method-independent.
/// The host comes from the URI authority or else the `Host` field, lower-cased, and is always
/// part of the key; the query's parameters are sorted by name (stable, so repeated names keep
/// their order), empty ones dropped, and those `query` does not keep left out.
pub(crate) fn primary_key(uri: &Uri, headers: &HeaderMap, query: &QueryKey) -> String {
    let mut key = String::new();
    push_primary_key(&mut key, uri, headers, query);
    key
}

/// [`primary_key`] appended to `out` (a reused buffer).
pub(crate) fn push_primary_key(out: &mut String, uri: &Uri, headers: &HeaderMap, query: &QueryKey) {
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    build(
        out,
        uri.scheme_str().unwrap_or("http"),
        host,
        uri.path(),
        uri.query(),
        query,
    );
}

fn build(
    key: &mut String,
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    keep: &QueryKey,
) {
    let host = host.rsplit('@').next().unwrap_or(host);
    let query_len = query.map_or(0, |q| q.len() + 1);
    key.reserve(scheme.len() + 3 + host.len() + path.len() + 1 + query_len);
    push_lowercase(key, scheme);
    key.push_str("://");
    push_lowercase(key, host);
    key.push_str(if path.is_empty() { "/" } else { path });
    let Some(query) = query else {
        return;
    };
    // Already normalised (the common case): copied as is, without sorting.
    let mut previous = "";
    let normalised = query.split('&').all(|p| {
        let name = param_name(p);
        let ok = !p.is_empty() && keep.keeps(name) && previous <= name;
        previous = name;
        ok
    });
    if normalised {
        key.push('?');
        key.push_str(query);
        return;
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && keep.keeps(param_name(p)))
        .collect();
    params.sort_by_key(|p| param_name(p));
    for (i, p) in params.iter().enumerate() {
        key.push(if i == 0 { '?' } else { '&' });
        key.push_str(p);
    }
}

fn push_lowercase(out: &mut String, s: &str) {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        out.push_str(&s.to_ascii_lowercase());
    } else {
        out.push_str(s);
    }
}

fn param_name(param: &str) -> &str {
    param.split('=').next().unwrap_or(param)
}

/// The absolute target of a `Location` / `Content-Location` value when it names the same
/// origin as the request (RFC 9111 §4.4: never invalidate across origins).
pub(crate) fn same_origin_target(request_origin: (&str, &str), location: &str) -> Option<Uri> {
    let uri: Uri = location.parse().ok()?;
    let (scheme, host) = request_origin;
    let same = match uri.authority() {
        None => uri.path().starts_with('/'),
        Some(authority) => {
            uri.scheme_str()
                .unwrap_or(scheme)
                .eq_ignore_ascii_case(scheme)
                && authority.as_str().eq_ignore_ascii_case(host)
        }
    };
    if !same {
        return None;
    }
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(scheme)
        .authority(host)
        .path_and_query(path_and_query)
        .build()
        .ok()
}

/// The absolute URI of a request (for invalidating its target).
pub(crate) fn absolute(uri: &Uri, headers: &HeaderMap) -> Option<Uri> {
    let (scheme, host) = origin(uri, headers);
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(scheme)
        .authority(host)
        .path_and_query(path_and_query)
        .build()
        .ok()
}

/// The scheme and host used in a request's key.
pub(crate) fn origin<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> (&'a str, &'a str) {
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    (uri.scheme_str().unwrap_or("http"), host)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn key(uri: &str, host: Option<&'static str>) -> String {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_static(host));
        }
        primary_key(&uri.parse().unwrap(), &h, &QueryKey::All)
    }

    fn same_origin_key(o: (&str, &str), location: &str) -> Option<String> {
        same_origin_target(o, location).map(|u| primary_key(&u, &HeaderMap::new(), &QueryKey::All))
    }

    #[test]
    fn host_is_always_part_of_the_key() {
        assert_eq!(key("/a", Some("Example.com")), "http://example.com/a");
        assert_ne!(key("/a", Some("a.example")), key("/a", Some("b.example")));
        assert_eq!(
            key("https://x.example:8443/a", None),
            "https://x.example:8443/a"
        );
    }

    #[test]
    fn query_parameters_are_sorted_by_name_stably() {
        assert_eq!(key("/p?b=2&a=1&&a=0", Some("h")), "http://h/p?a=1&a=0&b=2");
        assert_eq!(key("/p?b=2&a=1", Some("h")), key("/p?a=1&b=2", Some("h")));
        assert_ne!(key("/p?a=1", Some("h")), key("/p?a=2", Some("h")));
        assert_ne!(key("/p", Some("h")), key("/q", Some("h")));
    }

    #[test]
    fn policy_query_filters_parameters() {
        let h = HeaderMap::new();
        let uri: Uri = "http://h/p?utm=1&b=2&a=1".parse().unwrap();
        let only = QueryKey::Only(vec!["a".into()]);
        assert_eq!(primary_key(&uri, &h, &only), "http://h/p?a=1");
        let ignore = QueryKey::Ignore(vec!["utm".into()]);
        assert_eq!(primary_key(&uri, &h, &ignore), "http://h/p?a=1&b=2");
        assert_eq!(primary_key(&uri, &h, &QueryKey::None), "http://h/p");
    }

    #[test]
    fn location_invalidation_stays_on_the_origin_rfc9111_4_4() {
        let o = ("http", "h.example");
        assert_eq!(
            same_origin_key(o, "/items/1").as_deref(),
            Some("http://h.example/items/1")
        );
        assert_eq!(
            same_origin_key(o, "http://H.example/x?b&a").as_deref(),
            Some("http://h.example/x?a&b")
        );
        assert_eq!(same_origin_key(o, "http://evil.example/x"), None);
        assert_eq!(same_origin_key(o, "https://h.example/x"), None);
        assert_eq!(same_origin_key(o, "relative"), None);
    }

    proptest! {
        #[test]
        fn parameter_order_does_not_change_the_key(params in prop::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{0,4}", 0..6), seed in any::<u64>()) {
            let pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut shuffled = pairs.clone();
            let len = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % len);
            let a = key(&format!("/p?{}", pairs.join("&")), Some("h"));
            let b = key(&format!("/p?{}", shuffled.join("&")), Some("h"));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn any_location_value_does_not_panic(location in ".{0,64}") {
            let _ = same_origin_target(("http", "h"), &location);
        }
    }
}
